//! A private RabbitMQ node keeps durable messages across its own restart (the harness the
//! broker-restart tests stand on).

use std::fs;

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};

use crate::support::*;

/// Declares a durable quorum queue on `channel`.
async fn declare_quorum(channel: &lapin::Channel, name: &str) -> lapin::Queue {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .expect("quorum queue declared")
}

#[tokio::test]
async fn a_private_node_keeps_durable_messages_across_a_restart() {
    let mut broker = PrivateBroker::start().await;
    println!(
        "private_broker node={} port={} boot_ms={}",
        broker.node(),
        broker.port(),
        broker.boot_time().as_millis()
    );
    let ctl = broker.ctl(&["await_startup"]).await;
    assert!(
        ctl.status.success(),
        "rabbitmqctl cannot talk to {}: {}{}",
        broker.node(),
        String::from_utf8_lossy(&ctl.stdout),
        String::from_utf8_lossy(&ctl.stderr)
    );

    let messages: Vec<String> = (0..20).map(|i| format!("message-{i}")).collect();
    let (conn, channel) = confirm_channel(&broker.amqp_url()).await;
    declare_quorum(&channel, "wdtest.durable").await;
    for body in &messages {
        let confirm = channel
            .basic_publish(
                "".into(),
                "wdtest.durable".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "the node confirms {body}");
    }
    closed(conn.close(200, "bye".into())).await;

    broker.stop().await;
    assert!(
        Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
            .await
            .is_err(),
        "a stopped node refuses connections"
    );
    broker.start_again().await;
    println!(
        "private_broker node={} restart_boot_ms={}",
        broker.node(),
        broker.boot_time().as_millis()
    );

    let conn = Connection::connect(&broker.amqp_url(), ConnectionProperties::default())
        .await
        .expect("connects after the restart");
    let channel = conn.create_channel().await.unwrap();
    let queue = declare_quorum(&channel, "wdtest.durable").await;
    assert_eq!(queue.message_count() as usize, messages.len());
    let mut got = Vec::new();
    while let Some(msg) = channel
        .basic_get("wdtest.durable".into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        got.push(String::from_utf8(msg.delivery.data.clone()).unwrap());
        msg.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    assert_eq!(got, messages, "every confirmed message is back, in order");
    closed(conn.close(200, "bye".into())).await;

    let dir = broker.dir().to_path_buf();
    let pid_file = dir.join("node.pid");
    let beam: i32 = fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .unwrap();
    drop(broker);
    assert!(!dir.exists(), "{} is removed", dir.display());
    // SAFETY: existence check only.
    assert!(
        unsafe { libc::kill(beam, 0) } != 0,
        "beam {beam} is gone after drop"
    );
}
