//! Settings parsed from flags, and the rules across them.

use super::*;

fn try_parse(args: &[&str]) -> Result<Config, clap::Error> {
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        cfg: Config,
    }
    let args = std::iter::once("webhook-dispatcher").chain(args.iter().copied());
    <Cli as clap::Parser>::try_parse_from(args).map(|cli| cli.cfg)
}

fn parse(args: &[&str]) -> Config {
    try_parse(args).unwrap()
}

#[test]
fn a_public_listen_address_needs_an_admin_token() {
    let open = parse(&["--listen-addr", "0.0.0.0:8080"]);
    let err = open.validate().unwrap_err();
    assert!(matches!(err, ConfigError::TokenRequired(_)), "{err}");
    assert!(err.to_string().contains("ADMIN_TOKEN is required"));
    let guarded = parse(&[
        "--listen-addr",
        "0.0.0.0:8080",
        "--admin-token",
        "a-long-enough-token",
        "--portal-key",
        PORTAL_KEY,
    ]);
    assert!(guarded.validate().is_ok(), "{:?}", guarded.validate());
    assert!(
        parse(&["--listen-addr", "127.0.0.1:8080"])
            .validate()
            .is_ok()
    );
    // An empty token is no token: refused everywhere (it matched a missing header).
    for addr in ["0.0.0.0:8080", "127.0.0.1:8080"] {
        let err = parse(&["--listen-addr", addr, "--admin-token", ""])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("set but empty"), "{addr}: {err}");
    }
    // A short one (the Secret template's REPLACE_ME) is refused off loopback, warned on it.
    let err = parse(&[
        "--listen-addr",
        "0.0.0.0:8080",
        "--admin-token",
        "REPLACE_ME",
        "--portal-key",
        PORTAL_KEY,
    ])
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("at least 16 characters"), "{err}");
    let short_local = parse(&["--listen-addr", "127.0.0.1:8080", "--admin-token", "short"]);
    assert!(short_local.validate().is_ok() && short_local.weak_token());
    assert!(parse(&["--listen-addr", "[::1]:8080"]).validate().is_ok());
}

#[test]
fn a_public_url_off_this_machine_needs_the_token_and_key_a_public_address_does() {
    let proxied = ["--listen-addr", "127.0.0.1:8080", "--public-url"];
    let err = parse(&[&proxied[..], &["https://hooks.example.com"]].concat())
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ADMIN_TOKEN is required when PUBLIC_URL (https://hooks.example.com/) is not this machine"),
        "{err}"
    );
    let token = ["--admin-token", "a-long-enough-token"];
    let err = parse(&[&proxied[..], &["https://hooks.example.com"], &token[..]].concat())
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("PORTAL_KEY is required when PUBLIC_URL"),
        "{err}"
    );
    let err = parse(
        &[
            &proxied[..],
            &["https://hooks.example.com", "--admin-token", "short"],
        ]
        .concat(),
    )
    .validate()
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("at least 16 characters when PUBLIC_URL"),
        "{err}"
    );
    let key = ["--portal-key", PORTAL_KEY];
    assert!(
        parse(
            &[
                &proxied[..],
                &["https://hooks.example.com"],
                &token[..],
                &key[..]
            ]
            .concat()
        )
        .validate()
        .is_ok()
    );
    for local in [
        "http://localhost:8080",
        "http://127.0.0.1:8080",
        "http://[::1]:8080",
        "http://app.localhost:8080",
    ] {
        let cfg = parse(&[&proxied[..], &[local]].concat());
        assert!(cfg.validate().is_ok(), "{local}: {:?}", cfg.validate());
    }
}

const PORTAL_KEY: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn a_public_listen_address_needs_a_portal_key_of_32_characters() {
    let err = parse(&[
        "--listen-addr",
        "0.0.0.0:8080",
        "--admin-token",
        "a-long-enough-token",
    ])
    .validate()
    .unwrap_err();
    assert!(err.to_string().contains("PORTAL_KEY is required"), "{err}");
    // On loopback the key kept in the store does.
    assert!(
        parse(&["--listen-addr", "127.0.0.1:8080"])
            .validate()
            .is_ok()
    );
    // A short key (the Secret template's REPLACE_ME) is refused everywhere, before anything
    // is signed with it.
    let err = try_parse(&["--portal-key", "REPLACE_ME"]).err().unwrap();
    assert!(err.to_string().contains("at least 32 characters"), "{err}");
    assert!(try_parse(&["--portal-key", PORTAL_KEY]).is_ok());
}

#[test]
fn the_public_url_is_an_http_origin() {
    for good in ["https://hooks.example.com", "http://localhost:8080/"] {
        assert!(try_parse(&["--public-url", good]).is_ok(), "{good}");
    }
    for (bad, says) in [
        ("https://hooks.example.com/webhooks", "origin only"),
        ("ftp://hooks.example.com", "http(s) URL"),
        ("https://u:p@hooks.example.com", "credentials"),
        ("hooks.example.com", "not a URL"),
    ] {
        let err = try_parse(&["--public-url", bad]).err().unwrap();
        assert!(err.to_string().contains(says), "{bad}: {err}");
    }
}

#[test]
fn secrets_stay_out_of_debug_output() {
    let cfg = parse(&[
        "--admin-token",
        "token-that-must-not-leak",
        "--amqp-url",
        "amqp://svc:broker-password@rabbit:5672/%2f",
        "--database-url",
        "postgres://svc:db-password@db/webhooks",
        "--portal-key",
        "portal-key-that-must-not-leak-000",
    ]);
    let printed = format!("{cfg:?}");
    for secret in [
        "token-that-must-not-leak",
        "broker-password",
        "db-password",
        "portal-key-that",
    ] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
}

#[test]
fn a_retention_under_an_hour_or_past_a_century_is_refused() {
    let slip = try_parse(&["--delivery-log-retention", "6m"])
        .unwrap_err()
        .to_string();
    assert!(slip.contains("6m would delete the delivery log"), "{slip}");
    assert!(slip.contains("6M or 6months"), "{slip}");
    assert!(try_parse(&["--delivery-log-retention", "1000000y"]).is_err());
    for ok in ["0", "1h", "6M", "30d", "100y"] {
        let cfg = try_parse(&["--delivery-log-retention", ok]);
        assert!(cfg.is_ok(), "{ok}: {:?}", cfg.err());
    }
    assert_eq!(
        parse(&[]).delivery_log_retention,
        Duration::from_secs(30 * 86_400)
    );
}

#[test]
fn a_rotation_overlap_over_30_days_is_refused() {
    assert!(try_parse(&["--secret-rotation-overlap", "31days"]).is_err());
    assert!(try_parse(&["--secret-rotation-overlap", "30days"]).is_ok());
}
