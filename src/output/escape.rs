//! Text that came from the target (function, file, thread and task names, source lines, its
//! command line) is the target's to choose: `compile(src, "\x1b]0;...\x07\r\nFAKE", "exec")`
//! names a file with a terminal escape and a forged line in it. Every such string goes through
//! [`escape`] before it reaches a terminal or an SVG: control characters are shown as Python
//! shows them in a `repr` (`\x1b`, `\n`), as `ls` and `git` show odd bytes in names.

use std::borrow::Cow;
use std::fmt::Write;

/// Characters that are shown escaped: C0 and C1 controls and DEL (terminal commands, line
/// breaks), the bidirectional overrides and isolates (they reorder what follows them on the
/// line), and U+FFFE/U+FFFF (not allowed in XML).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{fffe}' | '\u{ffff}')
}

/// `s` with every control character written as an escape (`\x1b`, `\t`, `\n`, `\r`,
/// `\u202e`); borrowed when there is nothing to escape, which is nearly always.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Print one line on stderr without ever panicking (`eprintln!` panics when the write fails):
/// after an ssh disconnect stderr is a dead terminal (EIO), and loopspy must still stop its
/// target and write its files.
pub fn print_err(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// [`escape`] for an optional string.
pub fn escape_opt(s: Option<&str>) -> Option<Cow<'_, str>> {
    s.map(escape)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_sent() {
        assert_eq!(
            escape("\x1b]0;PWNED\x07\r\nFAKE LINE"),
            "\\x1b]0;PWNED\\x07\\r\\nFAKE LINE"
        );
        assert_eq!(escape("a\tb\u{9b}c\u{7f}"), "a\\tb\\x9bc\\x7f");
        assert_eq!(escape("abc\u{202e}cba"), "abc\\u202ecba");
        assert_eq!(escape("x\u{ffff}"), "x\\uffff");
    }

    #[test]
    fn ordinary_text_is_untouched_and_borrowed() {
        for s in [
            "handler",
            "app/main.py:42",
            "Task-7",
            "naïve ünïcode 名前",
            "<module>",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(b) if b == s), "{s}");
        }
    }

    #[test]
    fn escaped_text_has_no_control_characters_left() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(needs_escape));
    }
}
