//! The operator CLI on a terminal (a pseudo-terminal from `script(1)`): `replay` asks before it
//! changes anything and does only what the answer says; progress is drawn there, and only there.

use serde_json::Value;

use crate::support::*;

/// The records of `account` in the service's delivery log, through its API.
async fn records(service: &ServiceProcess, account: &str) -> Vec<Value> {
    service
        .delivery_logs(&format!("account_id={account}"))
        .await
}

/// Publishes an `identify` for `acct_tty` per number in `visitors` (its endpoint failing) and
/// waits until the delivery log holds that many more records.
async fn dead_letter_identifies(service: &ServiceProcess, visitors: std::ops::Range<usize>) {
    let expected = visitors.end;
    for n in visitors {
        let data = format!(r#"{{"visitor_id":"v_{n}"}}"#);
        let args = [
            "publish",
            "--event",
            "identify",
            "--account",
            "acct_tty",
            "--data",
            &data,
        ];
        service.cli(&args, b"").await.expect_code(0);
    }
    wait_until(&format!("{expected} dead letters"), PATIENCE, || async {
        records(service, "acct_tty").await.len() == expected
    })
    .await;
}

#[tokio::test]
async fn replay_on_a_terminal_asks_first_and_does_what_the_answer_says() {
    let service = ServiceProcess::start(&[("RETRY_DELAYS", "100ms")]).await;
    let receiver = Receiver::start().await;
    receiver.always(Reply::Status(503));
    service.subscribe("acct_tty", &receiver.url).await;
    dead_letter_identifies(&service, 0..3).await;
    receiver.always(Reply::Status(200));
    let delivered = receiver.count();

    // "n" (and anything but y/yes) replays nothing.
    let no = service
        .cli_on_terminal(&["replay", "--account", "acct_tty"], b"n\n")
        .await;
    assert!(
        no.stdout.contains("Replay 3 deliveries? [y/N]"),
        "asks on a terminal: {no:?}"
    );
    assert!(no.stdout.contains("nothing replayed"), "{no:?}");
    no.expect_code(1);
    assert!(
        records(&service, "acct_tty")
            .await
            .iter()
            .all(|r| r["replayed_at"].is_null()),
        "nothing marked replayed after a no"
    );

    // "y" replays them, with the summary.
    let yes = service
        .cli_on_terminal(&["replay", "--account", "acct_tty"], b"y\n")
        .await;
    yes.expect_code(0);
    assert!(yes.stdout.contains("Replay 3 deliveries? [y/N]"), "{yes:?}");
    assert!(
        yes.stdout.contains("replayed 3, skipped 0, failed 0"),
        "{yes:?}"
    );
    assert!(
        yes.stdout.contains("replaying [") && yes.stdout.contains("3/3"),
        "a progress bar is drawn on a terminal: {yes:?}"
    );
    receiver.wait_for(delivered + 3, PATIENCE).await;
    assert!(
        records(&service, "acct_tty")
            .await
            .iter()
            .all(|r| r["replayed_at"].is_string())
    );

    // Piped, the same command does not ask (it refuses without --yes) and draws nothing.
    let piped = service
        .cli(&["replay", "--account", "acct_tty"], b"y\n")
        .await;
    piped.expect_code(2);
    assert!(!piped.stdout.contains("[y/N]") && !piped.stderr.contains("[y/N]"));
    receiver.always(Reply::Status(503));
    dead_letter_identifies(&service, 3..4).await;
    receiver.always(Reply::Status(200));
    let piped = service
        .cli(&["replay", "--account", "acct_tty", "--yes"], b"")
        .await;
    piped.expect_code(0);
    assert!(
        piped.stdout.contains("replayed 1, skipped 0, failed 0"),
        "{piped:?}"
    );
    assert!(
        !piped.stdout.contains("replaying [") && !piped.stderr.contains("replaying ["),
        "no progress bar when piped: {piped:?}"
    );
}
