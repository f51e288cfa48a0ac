//! Rules for identifiers that people read and compare: account ids, event ids. One place, used
//! by the admin API and by the intake of events alike, so both refuse the same things.

/// Longest account id.
pub const MAX_ACCOUNT_ID: usize = 200;
/// Longest event id.
pub const MAX_EVENT_ID: usize = 200;

/// Unicode's format characters (general category Cf, Unicode 15.1): invisible, and some reorder
/// the text around them (U+202E), so two ids that differ only by them look the same.
const FORMAT: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` is a format character (see [`FORMAT`]).
pub fn is_format(c: char) -> bool {
    let c = c as u32;
    FORMAT.iter().any(|&(from, to)| (from..=to).contains(&c))
}

/// Checks an account id: 1 to 200 bytes, no control or format characters, no white space at
/// either end — so that two accounts never look the same while being different.
pub fn check_account_id(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Err("account_id must not be empty".into());
    }
    if raw.len() > MAX_ACCOUNT_ID {
        return Err(format!(
            "account_id must be at most {MAX_ACCOUNT_ID} bytes, got {}",
            raw.len()
        ));
    }
    if let Some(c) = raw.chars().find(|&c| c.is_control() || is_format(c)) {
        return Err(format!(
            "account_id must not contain control or invisible format characters (found U+{:04X})",
            c as u32
        ));
    }
    if raw.starts_with(char::is_whitespace) || raw.ends_with(char::is_whitespace) {
        return Err("account_id must not begin or end with white space".into());
    }
    Ok(())
}

/// Checks an event id: 1 to 200 visible ASCII characters (`!` to `~`). It is sent as the
/// `webhook-id` header and signed; receivers read headers as Latin-1 or ASCII, so anything else
/// would reach them changed and its signature would never verify.
pub fn check_event_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_EVENT_ID {
        return Err(format!(
            "id must be 1 to {MAX_EVENT_ID} characters, got {}",
            id.len()
        ));
    }
    if let Some(c) = id.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(format!(
            "id must be visible ASCII characters only (! to ~; no spaces, control or non-ASCII \
             characters), as receivers get it in the webhook-id header; found U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_that_could_look_like_another_are_refused() {
        assert!(check_account_id("acct_acme").is_ok());
        assert!(check_account_id("Société Générale").is_ok());
        for bad in [
            "",
            "   ",
            "acct\u{202E}emca",
            "\u{00A0}acct_acme",
            "acct_acme ",
            "acct\u{200B}acme",
            "acct\nacme",
            "acct\u{0085}acme",
            "acct\u{FEFF}",
            "acct\u{E0041}",
        ] {
            assert!(check_account_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_account_id(&"a".repeat(200)).is_ok());
        assert!(check_account_id(&"a".repeat(201)).is_err());
    }

    #[test]
    fn event_ids_are_visible_ascii() {
        assert!(check_event_id("evt_01J9Z:x/y+z=").is_ok());
        for bad in ["", "évt", "a b", "a\tb", "a\u{7f}", "\u{200B}"] {
            assert!(check_event_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_event_id(&"x".repeat(201)).is_err());
    }
}
