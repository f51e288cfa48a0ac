//! The service notices a cut broker connection, reports it, and recovers by itself.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::helpers::*;

/// A TCP proxy in front of the broker that can cut every connection and refuse new ones.
struct Proxy {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
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

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_cut_connection_is_reported_and_recovered_without_losing_events() {
    let broker = url::Url::parse(&amqp_url()).unwrap();
    let upstream = format!(
        "{}:{}",
        broker.host_str().unwrap(),
        broker.port().unwrap_or(5672)
    );
    let proxy = Proxy::start(upstream).await;
    let mut via_proxy = broker.clone();
    via_proxy.set_port(Some(proxy.addr.port())).unwrap();
    let app = spawn_app_with(&["--amqp-url", via_proxy.as_str()]).await;
    let receiver = Receiver::start().await;
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    app.publish_fixture("purchase").await;
    receiver.wait_for(1, PATIENCE).await;

    for round in 1..=3 {
        proxy.cut();
        wait_until("/readyz to say 503", PATIENCE, || async {
            app.http
                .get(app.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
        })
        .await;
        // The gauge follows the broker loop, a moment after /readyz (which reads the channel).
        wait_until("webhook_broker_connected 0", PATIENCE, || async {
            app.metrics().await.contains("webhook_broker_connected 0")
        })
        .await;
        // Published while the service is cut off (the test's own connection is direct).
        app.publish_fixture("identify").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.restore();
        wait_until("/readyz to say 200 again", PATIENCE, || async {
            app.http
                .get(app.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        })
        .await;
        receiver.wait_for(1 + round, PATIENCE).await;
        wait_until("webhook_broker_connected 1", PATIENCE, || async {
            app.metrics().await.contains("webhook_broker_connected 1")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let identify = receiver
        .received()
        .iter()
        .filter(|r| r.text().contains("\"identify\""))
        .count();
    assert_eq!(
        identify, 3,
        "each event published during a cut arrives once"
    );
    app.stop().await.unwrap();
}
