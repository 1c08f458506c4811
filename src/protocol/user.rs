//! User names: the one rule for every way a name comes in (`?user=` on the
//! upgrade, the `user` of an HTTP publish, a token's `sub`).
//!
//! A name is 1–64 characters with no control characters (Unicode Cc: NUL,
//! newline, ESC of terminal escapes, DEL, C1), no line or paragraph
//! separators, no bidirectional formatting characters (which make a name
//! display as a different one), and no white space at either end. Names are
//! never trimmed or rewritten: `" ann"` is refused rather than becoming
//! `"ann"`, so two spellings never turn into one user.

use std::sync::Arc;

pub const MAX_USER_LEN: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidUser {
    #[error("user name is empty")]
    Empty,
    #[error("user name is over 64 characters")]
    TooLong,
    #[error("user name has a control, line separator or bidirectional formatting character")]
    Forbidden,
    #[error("user name starts or ends with white space")]
    Padded,
}

/// Checks `name` against the rule; `Ok` with the name unchanged.
pub fn parse(name: &str) -> Result<Arc<str>, InvalidUser> {
    check(name)?;
    Ok(Arc::from(name))
}

/// The rule itself, for callers that keep the name in another form.
pub fn check(name: &str) -> Result<(), InvalidUser> {
    let (Some(first), Some(last)) = (name.chars().next(), name.chars().next_back()) else {
        return Err(InvalidUser::Empty);
    };
    // Counting stops at 65: a 10 KB name costs no more than a 65-char one.
    if name.chars().take(MAX_USER_LEN + 1).count() > MAX_USER_LEN {
        return Err(InvalidUser::TooLong);
    }
    if name.chars().any(forbidden) {
        return Err(InvalidUser::Forbidden);
    }
    if first.is_whitespace() || last.is_whitespace() {
        return Err(InvalidUser::Padded);
    }
    Ok(())
}

fn forbidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators.
            '\u{2028}' | '\u{2029}'
            // Bidirectional marks, embeddings, overrides and isolates.
            | '\u{200e}' | '\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names_unchanged() {
        for ok in [
            "a",
            "Ann Lee",
            "名前",
            "o'brien-2 (ops)",
            &"x".repeat(64),
            &"é".repeat(64),
        ] {
            assert_eq!(parse(ok).as_deref(), Ok(ok), "{ok:?}");
        }
    }

    #[test]
    fn refuses_each_kind_of_bad_name() {
        assert_eq!(check(""), Err(InvalidUser::Empty));
        assert_eq!(check(&"x".repeat(65)), Err(InvalidUser::TooLong));
        assert_eq!(check(&"é".repeat(65)), Err(InvalidUser::TooLong));
        assert_eq!(check(&"x".repeat(10_000)), Err(InvalidUser::TooLong));
        for bad in [
            "a\0b",
            "a\nb",
            "a\rb",
            "a\tb",
            "\u{1b}[31mred",
            "a\u{7f}",
            "a\u{85}b",
            "a\u{2028}b",
            "a\u{202e}b",
            "a\u{2067}b",
            "a\u{200f}b",
        ] {
            assert_eq!(check(bad), Err(InvalidUser::Forbidden), "{bad:?}");
        }
        for bad in [" ann", "ann ", "\u{3000}ann", "ann\u{a0}"] {
            assert_eq!(check(bad), Err(InvalidUser::Padded), "{bad:?}");
        }
    }
}
