//! The service notices a cut broker connection, reports it, and recovers by itself.

use std::time::Duration;

use crate::support::*;

#[tokio::test]
async fn a_cut_connection_is_reported_and_recovered_without_losing_events() {
    let proxy = Proxy::to_broker().await;
    let app = spawn_app_with(&["--amqp-url", &proxy.amqp_url()]).await;
    let receiver = Receiver::start().await;
    app.subscribe("acct_acme", &receiver.url, &["*"]).await;
    app.publish_fixture("purchase").await;
    receiver.wait_for(1, PATIENCE).await;
    let events = format!("{}.events", app.prefix);

    for round in 1..=3 {
        // A cut before the service's ack of a delivered event has it delivered again (at least
        // once): this test is about events published during a cut, so it cuts once nothing is
        // held unacked.
        wait_until("the delivered events acked", PATIENCE, || async {
            messages_unacknowledged(&events).await == 0
        })
        .await;
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
            metric_sum(&app.metrics().await, "webhook_broker_connected", "") == 0.0
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
            metric_sum(&app.metrics().await, "webhook_broker_connected", "") == 1.0
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
