//! Moderation as rules (PROTOCOL §6): the studio's word list, matched case-insensitively after
//! folding look-alike characters (`4` -> `a`, `$` -> `s`, Cyrillic `о` -> `o`, `é` -> `e`) and
//! the separators players put between letters (`b.a.d`, `b a d`, `b-a-d`), and the masking of
//! what matched. Pure: the moderation endpoint and the record of flags are `crate::moderation`.
//!
//! A word matches a whole token, never the inside of a longer word ("class" never matches
//! "ass"); a pattern with `*` at its start or end matches a token that ends or starts with it.

use std::ops::Range;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a checked text was going to be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    Chat,
    Content,
    Run,
    Nickname,
}

impl Surface {
    pub fn as_str(self) -> &'static str {
        match self {
            Surface::Chat => "chat",
            Surface::Content => "content",
            Surface::Run => "run",
            Surface::Nickname => "nickname",
        }
    }
}

/// The category a word-list match is recorded under.
pub const WORD_LIST: &str = "word_list";

/// One recorded flag, as the admin lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Flag {
    pub id: i64,
    /// `chat`, `content`, `run` or `nickname`.
    pub surface: String,
    /// The player who wrote it or whose request made it; none for shared content of nobody.
    pub user_id: Option<i64>,
    pub text: String,
    /// What flagged it: `word_list`, and the moderation endpoint's categories.
    pub categories: Vec<String>,
    pub created_at: DateTime<Utc>,
}

/// The word list: one word or pattern a line; blank lines and lines starting with `#` are
/// skipped; words are folded as the text is. A line `re:PATTERN` is a regular expression,
/// matched case-insensitively inside each folded word (`^` and `$` anchor it to the word).
#[derive(Debug, Clone, Default)]
pub struct WordList {
    words: Vec<Pattern>,
    expressions: Vec<regex_lite::Regex>,
}

/// A `re:` line of the word list that is not a regular expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: `re:{pattern}` is not a regular expression: {why}")]
pub struct BadPattern {
    pub line: usize,
    pub pattern: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    text: String,
    /// `*word`: a token ending with it.
    any_start: bool,
    /// `word*`: a token starting with it.
    any_end: bool,
}

/// A token of the text, folded, with where it stands in the original.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    folded: String,
    span: Range<usize>,
}

impl WordList {
    pub fn parse(source: &str) -> Result<WordList, BadPattern> {
        let mut list = WordList::default();
        for (at, line) in source.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(pattern) = line.strip_prefix("re:") {
                let expression = regex_lite::Regex::new(&format!("(?i){pattern}")).map_err(|e| BadPattern {
                    line: at + 1,
                    pattern: pattern.to_owned(),
                    why: e.to_string(),
                })?;
                list.expressions.push(expression);
                continue;
            }
            let any_start = line.starts_with('*');
            let any_end = line.ends_with('*') && line.len() > 1;
            let text: String = line.trim_matches('*').chars().filter_map(fold).collect();
            if !text.is_empty() {
                list.words.push(Pattern { text, any_start, any_end });
            }
        }
        Ok(list)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty() && self.expressions.is_empty()
    }

    /// Where the text holds a listed word (byte ranges of the original, in order).
    pub fn find(&self, text: &str) -> Vec<Range<usize>> {
        if self.is_empty() {
            return Vec::new();
        }
        let mut found: Vec<Range<usize>> = tokens(text)
            .into_iter()
            .filter(|t| {
                self.words.iter().any(|w| w.matches(&t.folded))
                    || self.expressions.iter().any(|e| e.is_match(&t.folded))
            })
            .map(|t| t.span)
            .collect();
        found.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
        found
    }
}

impl Pattern {
    fn matches(&self, token: &str) -> bool {
        match (self.any_start, self.any_end) {
            (false, false) => token == self.text,
            (false, true) => token.starts_with(&self.text),
            (true, false) => token.ends_with(&self.text),
            (true, true) => token.contains(&self.text),
        }
    }
}

/// `text` with every range replaced by `***`.
pub fn mask(text: &str, ranges: &[Range<usize>]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in ranges {
        if r.start < at {
            continue;
        }
        out.push_str(&text[at..r.start]);
        out.push_str("***");
        at = r.end;
    }
    out.push_str(&text[at..]);
    out
}

/// One character as the word list sees it: a lower-case letter or digit-free stand-in, or
/// `None` for a separator.
fn fold(c: char) -> Option<char> {
    let c = match c {
        '0' => 'o',
        '1' => 'i',
        '3' | '€' => 'e',
        '4' | '@' => 'a',
        '5' | '$' => 's',
        '7' | '+' => 't',
        '8' => 'b',
        '9' => 'g',
        // Cyrillic and Greek letters that look Latin.
        'а' | 'А' | 'α' | 'Α' => 'a',
        'е' | 'Е' | 'ε' | 'Ε' => 'e',
        'о' | 'О' | 'ο' | 'Ο' => 'o',
        'р' | 'Р' | 'ρ' | 'Ρ' => 'p',
        'с' | 'С' => 'c',
        'х' | 'Х' | 'χ' | 'Χ' => 'x',
        'у' | 'У' => 'y',
        'і' | 'І' | 'ι' | 'Ι' => 'i',
        'к' | 'К' | 'κ' | 'Κ' => 'k',
        'т' | 'Т' | 'τ' | 'Τ' => 't',
        'н' | 'Н' | 'η' | 'Η' => 'h',
        'в' | 'В' | 'β' | 'Β' => 'b',
        'м' | 'М' | 'μ' | 'Μ' => 'm',
        'ν' | 'Ν' => 'v',
        // Accented Latin letters.
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'a',
        'è' | 'é' | 'ê' | 'ë' | 'È' | 'É' | 'Ê' | 'Ë' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'Ì' | 'Í' | 'Î' | 'Ï' => 'i',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' | 'Ø' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'Ù' | 'Ú' | 'Û' | 'Ü' => 'u',
        'ç' | 'Ç' => 'c',
        'ñ' | 'Ñ' => 'n',
        'ý' | 'ÿ' | 'Ý' => 'y',
        // Full-width Latin letters.
        c @ 'ａ'..='ｚ' => char::from_u32(c as u32 - 'ａ' as u32 + 'a' as u32)?,
        c @ 'Ａ'..='Ｚ' => char::from_u32(c as u32 - 'Ａ' as u32 + 'a' as u32)?,
        c if c.is_alphanumeric() => return c.to_lowercase().next(),
        _ => return None,
    };
    Some(c)
}

/// The text's tokens: runs of letters (after folding), and runs of single letters set apart
/// by separators (`b.a.d`, `b a d`) joined into one token.
fn tokens(text: &str) -> Vec<Token> {
    // Plain words first.
    let mut words: Vec<Token> = Vec::new();
    let mut current: Option<Token> = None;
    for (at, c) in text.char_indices() {
        match fold(c) {
            Some(f) => {
                let token = current.get_or_insert_with(|| Token { folded: String::new(), span: at..at });
                token.folded.push(f);
                token.span.end = at + c.len_utf8();
            }
            None => words.extend(current.take()),
        }
    }
    words.extend(current.take());
    // Then runs of one-letter words, joined (b.a.d -> bad).
    let mut joined = Vec::new();
    let mut run: Vec<&Token> = Vec::new();
    // Every stretch of two to 32 of them, so a letter standing before the word (`a b.a.d`)
    // does not hide it, and the stretches stay bounded.
    let mut flush = |run: &Vec<&Token>| {
        for start in 0..run.len() {
            for end in start + 2..=run.len().min(start + 32) {
                let stretch = &run[start..end];
                joined.push(Token {
                    folded: stretch.iter().map(|t| t.folded.as_str()).collect(),
                    span: stretch[0].span.start..stretch[stretch.len() - 1].span.end,
                });
            }
        }
    };
    for token in &words {
        let adjacent = run.last().is_some_and(|last| text[last.span.end..token.span.start].chars().count() <= 2);
        if token.folded.chars().count() == 1 && (run.is_empty() || adjacent) {
            run.push(token);
        } else {
            flush(&run);
            run.clear();
            if token.folded.chars().count() == 1 {
                run.push(token);
            }
        }
    }
    flush(&run);
    words.extend(joined);
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> WordList {
        WordList::parse("# the studio's words\nbad\n\n*hole\nzonk*\nre:^gr+[o0]ss$\n").unwrap()
    }

    fn masked(text: &str) -> String {
        let list = list();
        mask(text, &list.find(text))
    }

    #[test]
    fn look_alikes_case_and_separators_fold_to_the_word() {
        for text in ["bad", "BaD", "b4d", "b.a.d", "b a d", "b-a-d", "b_4_D", "bаd", "bád", "ｂａｄ", "you are b.a.d!"]
        {
            assert!(!list().find(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn a_word_never_matches_inside_a_longer_one() {
        for text in ["badge", "abad", "embedded", "good", "b ad", "b. . . .a. . . d", ""] {
            assert!(list().find(text).is_empty(), "{text}");
        }
    }

    #[test]
    fn patterns_match_token_starts_and_ends() {
        assert_eq!(masked("a rathole here"), "a *** here");
        assert_eq!(masked("zonked out, zonk"), "*** out, ***");
        assert_eq!(masked("hole-in-one"), "***-in-one");
    }

    #[test]
    fn masking_replaces_exactly_what_matched() {
        assert_eq!(masked("so BAD, really b.a.d and b4d."), "so ***, really *** and ***.");
        assert_eq!(masked("nothing here"), "nothing here");
        assert_eq!(masked("bаd ünïcode"), "*** ünïcode");
    }

    #[test]
    fn re_lines_are_regular_expressions_over_the_folded_words() {
        assert_eq!(masked("so GRRROSS, g.r.0.s.s and gross"), "so ***, *** and ***");
        assert_eq!(masked("engrossed"), "engrossed", "anchored to the word");
        let bad = WordList::parse("bad\nre:(unclosed\n").unwrap_err();
        assert_eq!((bad.line, bad.pattern.as_str()), (2, "(unclosed"));
        assert!(bad.to_string().starts_with("line 2: `re:(unclosed` is not a regular expression"), "{bad}");
    }

    #[test]
    fn an_empty_list_finds_nothing() {
        assert!(WordList::parse("# only a comment\n\n").unwrap().is_empty());
        assert!(WordList::default().find("bad").is_empty());
    }
}
