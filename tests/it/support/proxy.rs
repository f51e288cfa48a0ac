//! A TCP proxy in front of the broker that can cut connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::amqp_url;

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones.
pub struct Proxy {
    pub addr: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    /// A proxy to the broker at [`amqp_url`].
    pub async fn to_broker() -> Proxy {
        let broker = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        let upstream = format!(
            "{}:{}",
            broker.host_str().expect("AMQP_URL has a host"),
            broker.port().unwrap_or(5672)
        );
        Proxy::start(upstream).await
    }

    pub async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, l) = (open.clone(), links.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let upstream = upstream.clone();
                l.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { addr, open, links }
    }

    /// [`amqp_url`] with its port pointed at this proxy.
    pub fn amqp_url(&self) -> String {
        let mut url = url::Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        url.set_port(Some(self.addr.port()))
            .expect("port is settable");
        url.to_string()
    }

    /// Drops every open connection and refuses new ones until [`restore`](Self::restore).
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
