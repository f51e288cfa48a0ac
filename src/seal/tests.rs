//! Seals made and checked; keys rotated, retired and read again.

use std::time::Duration;

use super::*;

fn key(id: i64, byte: u8) -> StoredKey {
    StoredKey {
        id,
        secret: vec![byte; 32],
        created_at: "2026-12-01T00:00:00.000Z".into(),
        retires_at: None,
    }
}

#[tokio::test]
async fn a_seal_verifies_for_its_kind_and_body_only() {
    let ring = Keyring::fixed(&[key(1, 7)]).unwrap();
    let seal = ring.seal("delivery", b"{\"a\":1}");
    assert_eq!(seal.key_id, "1");
    let verify = |kind: &'static str, body: &'static [u8], mac: String| {
        let ring = &ring;
        let key_id = seal.key_id.clone();
        async move { ring.verify(kind, body, Some(&key_id), Some(&mac)).await }
    };
    assert_eq!(
        verify("delivery", b"{\"a\":1}", seal.mac.clone()).await,
        Ok(())
    );
    assert_eq!(
        verify("delivery", b"{\"a\":2}", seal.mac.clone()).await,
        Err(Unverified::Forged(Forgery::BadMac))
    );
    assert_eq!(
        verify("replay", b"{\"a\":1}", seal.mac.clone()).await,
        Err(Unverified::Forged(Forgery::BadMac)),
        "a seal made for one kind does not pass for another"
    );
    assert_eq!(
        verify("delivery", b"{\"a\":1}", "not base64!".into()).await,
        Err(Unverified::Forged(Forgery::BadMac))
    );
    assert_eq!(
        ring.verify("delivery", b"{}", None, None).await,
        Err(Unverified::Forged(Forgery::Unsigned))
    );
    assert_eq!(
        ring.verify("delivery", b"{}", Some("9"), Some(&seal.mac))
            .await,
        Err(Unverified::Forged(Forgery::UnknownKey("9".into())))
    );
}

#[tokio::test]
async fn the_newest_key_signs_and_older_ones_still_verify() {
    let old = Keyring::fixed(&[key(1, 1)]).unwrap();
    let both = Keyring::fixed(&[key(2, 2), key(1, 1)]).unwrap();
    let sealed_before = old.seal("dead_letter", b"x");
    assert_eq!(
        both.verify(
            "dead_letter",
            b"x",
            Some(&sealed_before.key_id),
            Some(&sealed_before.mac)
        )
        .await,
        Ok(())
    );
    let sealed_after = both.seal("dead_letter", b"x");
    assert_eq!(sealed_after.key_id, "2");
    assert_ne!(sealed_after.mac, sealed_before.mac);
    assert!(Keyring::fixed(&[]).is_err());
}

/// Keys kept where a test can change them, or make reading them fail; counts the reads.
#[derive(Default)]
struct Source {
    keys: std::sync::Mutex<Vec<StoredKey>>,
    failing: std::sync::atomic::AtomicBool,
    reads: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl KeySource for Source {
    async fn message_keys(
        &self,
        _now: DateTime<Utc>,
    ) -> Result<Vec<StoredKey>, Box<dyn std::error::Error + Send + Sync>> {
        use std::sync::atomic::Ordering;
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            return Err("the store is down".into());
        }
        Ok(self.keys.lock().unwrap().clone())
    }
}

impl Source {
    fn with(keys: Vec<StoredKey>) -> Arc<Source> {
        let source = Source::default();
        *source.keys.lock().unwrap() = keys;
        Arc::new(source)
    }
    fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test(start_paused = true)]
async fn a_key_made_elsewhere_is_found_even_right_after_a_reload() {
    let source = Source::with(vec![key(1, 1)]);
    let ring = Keyring::load(source.clone()).await.unwrap();
    let started = tokio::time::Instant::now();
    // A rotation elsewhere, half a second after this process read its keys: before, the
    // once-a-second limit on reloads had a message sealed with it taken for a forgery.
    tokio::time::sleep(Duration::from_millis(500)).await;
    source.keys.lock().unwrap().insert(0, key(2, 2));
    let sealed = Keyring::fixed(&[key(2, 2)]).unwrap().seal("delivery", b"x");
    assert_eq!(
        ring.verify("delivery", b"x", Some("2"), Some(&sealed.mac))
            .await,
        Ok(())
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "waited for the next reload"
    );
    assert_eq!(source.reads(), 2);
    // Found now without reading again.
    assert_eq!(
        ring.verify("delivery", b"x", Some("2"), Some(&sealed.mac))
            .await,
        Ok(())
    );
    assert_eq!(source.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn made_up_keys_share_one_reload_a_second_and_stay_forgeries() {
    let source = Source::with(vec![key(1, 1)]);
    let ring = Keyring::load(source.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mac = ring.seal("delivery", b"x").mac;
    let flood = (0..50).map(|n| {
        let (ring, mac) = (&ring, &mac);
        async move {
            let id = format!("made-up-{n}");
            ring.verify("delivery", b"x", Some(&id), Some(mac)).await
        }
    });
    let started = tokio::time::Instant::now();
    let verdicts = futures_util::future::join_all(flood).await;
    for (n, verdict) in verdicts.into_iter().enumerate() {
        assert_eq!(
            verdict,
            Err(Unverified::Forged(Forgery::UnknownKey(format!(
                "made-up-{n}"
            ))))
        );
    }
    assert_eq!(source.reads(), 2, "one reload for all fifty");
    assert!(started.elapsed() <= Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn keys_that_cannot_be_read_again_condemn_nothing() {
    let source = Source::with(vec![key(1, 1)]);
    let ring = Keyring::load(source.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    source
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let sealed = Keyring::fixed(&[key(2, 2)]).unwrap().seal("delivery", b"x");
    let verdict = ring
        .verify("delivery", b"x", Some("2"), Some(&sealed.mac))
        .await;
    let Err(Unverified::KeysUnavailable { key: named, error }) = verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(named, "2");
    assert!(error.contains("the store is down"), "{error}");
    // The keys it had still verify, with no reload.
    let known = ring.seal("delivery", b"y");
    assert_eq!(
        ring.verify("delivery", b"y", Some(&known.key_id), Some(&known.mac))
            .await,
        Ok(())
    );
    // The store back (and the key made meanwhile): the message, handed back and taken
    // again a second later, is found genuine.
    tokio::time::sleep(Duration::from_secs(1)).await;
    source
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    source.keys.lock().unwrap().insert(0, key(2, 2));
    assert_eq!(
        ring.verify("delivery", b"x", Some("2"), Some(&sealed.mac))
            .await,
        Ok(())
    );
}

#[tokio::test]
async fn a_key_stops_verifying_when_its_overlap_ends() {
    let sealed = Keyring::fixed(&[key(1, 1)]).unwrap().seal("delivery", b"x");
    let mut retired = key(1, 1);
    retired.retires_at = Some("2026-01-01T00:00:00.000Z".into());
    let ring = Keyring::fixed(&[key(2, 2), retired]).unwrap();
    assert_eq!(
        ring.verify("delivery", b"x", Some("1"), Some(&sealed.mac))
            .await,
        Err(Unverified::Forged(Forgery::UnknownKey("1".into())))
    );
}
