//! Secrets out of text: every run of 8 or more consecutive characters of the API key (the whole
//! key included) replaced by `[redacted]` in something bound for a log, the stored
//! `last_error` or an admin's list. Pure.

/// The shortest piece of the key that is redacted; a shorter key is redacted whole.
const MIN_RUN: usize = 8;

const REDACTED: &str = "[redacted]";

/// `text` with every run of at least 8 consecutive characters of `secret` (or the whole of a
/// shorter secret) replaced by `[redacted]`; runs that touch or overlap are replaced once.
pub fn redact(text: &str, secret: &str) -> String {
    let key: Vec<char> = secret.chars().collect();
    if key.is_empty() {
        return text.to_owned();
    }
    let min_run = MIN_RUN.min(key.len());
    let chars: Vec<char> = text.chars().collect();
    let mut secret_at = vec![false; chars.len()];
    // `run[j + 1]`: how many characters of `text` ending here equal those of the key ending at
    // `key[j]` (the longest common suffix), one text character at a time.
    let mut run = vec![0usize; key.len() + 1];
    for (i, &c) in chars.iter().enumerate() {
        let mut longest = 0;
        for j in (0..key.len()).rev() {
            run[j + 1] = if key[j] == c { run[j] + 1 } else { 0 };
            longest = longest.max(run[j + 1]);
        }
        if longest >= min_run {
            secret_at[i + 1 - longest..=i].iter_mut().for_each(|s| *s = true);
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        if !secret_at[i] {
            out.push(c);
        } else if i == 0 || !secret_at[i - 1] {
            out.push_str(REDACTED);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    /// 36 characters, as a real provider key might be.
    const KEY: &str = "sk-ant-CANARY-0123456789abcdefghijkl";

    #[test]
    fn the_whole_key_and_any_long_piece_of_it_go() {
        assert_eq!(KEY.chars().count(), 36);
        assert_eq!(redact(&format!("bad key {KEY} given"), KEY), "bad key [redacted] given");
        // 31 of its 36 characters, as an upstream that cuts a key in its message echoes it.
        let most = &KEY[3..34];
        assert_eq!(most.len(), 31);
        assert_eq!(redact(&format!("invalid x-api-key: {most}..."), KEY), "invalid x-api-key: [redacted]...");
        assert_eq!(redact(&KEY[..20], KEY), "[redacted]", "a piece at the start of the text");
        assert_eq!(redact(&format!("ends with {}", &KEY[20..]), KEY), "ends with [redacted]");
    }

    #[test]
    fn eight_characters_go_and_seven_stay() {
        let eight = &KEY[10..18];
        assert_eq!(redact(&format!("x{eight}y"), KEY), "x[redacted]y");
        let seven = &KEY[10..17];
        assert_eq!(redact(&format!("x{seven}y"), KEY), format!("x{seven}y"));
        assert_eq!(redact("sk-ant-", KEY), "sk-ant-", "a common prefix alone is not the key");
        assert_eq!(redact("nothing here", KEY), "nothing here");
    }

    #[test]
    fn several_and_overlapping_pieces() {
        let (a, b) = (&KEY[0..12], &KEY[20..30]);
        assert_eq!(redact(&format!("{a} and {b} and {KEY}"), KEY), "[redacted] and [redacted] and [redacted]");
        // Two pieces that overlap in the text (the key repeats itself) are one run.
        let repeating = "abcdefghabcdefgh";
        assert_eq!(redact("--abcdefghabcdefghab--", repeating), "--[redacted]--");
        // Two pieces side by side, neither one stretch of the key: still both gone.
        assert_eq!(redact(&format!("{}{}", &KEY[20..30], &KEY[0..9]), KEY), "[redacted]");
    }

    #[test]
    fn multibyte_text_around_a_piece_is_kept() {
        let piece = &KEY[5..25];
        assert_eq!(redact(&format!("clé «{piece}» ünd 🔑"), KEY), "clé «[redacted]» ünd 🔑");
        let key = "ключ-секрет-1234";
        assert_eq!(redact("ошибка: секрет-1234!", key), "ошибка: [redacted]!");
        assert_eq!(redact("ошибка: ключ", key), "ошибка: ключ", "4 characters of a multibyte key stay");
    }

    #[test]
    fn short_and_empty_secrets() {
        assert_eq!(redact("the key abc is bad", "abc"), "the key [redacted] is bad");
        assert_eq!(redact("ab is not it", "abc"), "ab is not it");
        assert_eq!(redact("anything", ""), "anything");
    }
}
