//! Secrets out of text: the API key replaced wherever it (or a piece of it cut at either end)
//! appears in something bound for a log, a response or the stored `last_error`. Pure.

/// `text` with every occurrence of `secret` replaced, for anything that may reach a log,
/// a response or the stored `last_error`. Provider messages are cut to a length before they
/// get here, so a secret cut at either end of `text` is replaced too.
pub fn redact(text: &str, secret: &str) -> String {
    const MIN_PIECE: usize = 4;
    if secret.len() < MIN_PIECE {
        return text.to_owned();
    }
    let mut out = text.replace(secret, "[redacted]");
    // The longest start of the secret that `out` ends with ...
    if let Some(cut) =
        (MIN_PIECE..secret.len()).rev().filter(|&n| secret.is_char_boundary(n)).find(|&n| out.ends_with(&secret[..n]))
    {
        out.truncate(out.len() - cut);
        out.push_str("[redacted]");
    }
    // ... and the longest end of the secret that it starts with.
    if let Some(cut) =
        (1..=secret.len() - MIN_PIECE).filter(|&n| secret.is_char_boundary(n)).find(|&n| out.starts_with(&secret[n..]))
    {
        out.replace_range(..secret.len() - cut, "[redacted]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_whole_and_cut_secrets() {
        let key = "sk-canary-0123456789";
        assert_eq!(redact(&format!("bad key {key} given"), key), "bad key [redacted] given");
        assert_eq!(redact("bad key sk-canary-01", key), "bad key [redacted]");
        assert_eq!(redact("456789 was the key", key), "[redacted] was the key");
        assert_eq!(redact("ends in sk-", key), "ends in sk-", "pieces under four characters stay");
        assert_eq!(redact("nothing here", key), "nothing here");
        assert_eq!(redact("short", "abc"), "short");
    }
}
