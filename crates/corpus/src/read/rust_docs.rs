//! Doc comments out of Rust source: the prose a crate's authors wrote for readers.

/// Extract `//!` and `///` line comments and `/*! */` / `/** */` block comments, with their
/// markers stripped. Consecutive doc lines form one block; blocks are separated by a blank line.
/// `////` and `/***` are ordinary comments in Rust, so they are skipped, as the compiler does.
pub fn extract_doc_comments(src: &str) -> String {
    let mut out = String::new();
    let mut in_block = false; // inside /** or /*!
    let mut last_was_doc = false;
    for line in src.lines() {
        let t = line.trim_start();
        if in_block {
            let (body, closes) = match t.find("*/") {
                Some(i) => (&t[..i], true),
                None => (t, false),
            };
            let body = body.strip_prefix('*').map(|b| b.strip_prefix(' ').unwrap_or(b)).unwrap_or(body);
            push_line(&mut out, body.trim_end());
            if closes {
                in_block = false;
            }
            last_was_doc = true;
            continue;
        }
        let doc = if let Some(rest) = t.strip_prefix("//!") {
            Some(rest)
        } else if t.starts_with("///") && !t.starts_with("////") {
            Some(&t[3..])
        } else {
            None
        };
        if let Some(rest) = doc {
            if !last_was_doc && !out.is_empty() {
                out.push('\n');
            }
            push_line(&mut out, rest.strip_prefix(' ').unwrap_or(rest).trim_end());
            last_was_doc = true;
            continue;
        }
        let block = if let Some(rest) = t.strip_prefix("/*!") {
            Some(rest)
        } else if t.starts_with("/**") && !t.starts_with("/***") && !t.starts_with("/**/") {
            Some(&t[3..])
        } else {
            None
        };
        if let Some(rest) = block {
            if !out.is_empty() {
                out.push('\n');
            }
            match rest.find("*/") {
                Some(i) => push_line(&mut out, rest[..i].trim()),
                None => {
                    let r = rest.trim();
                    if !r.is_empty() {
                        push_line(&mut out, r);
                    }
                    in_block = true;
                }
            }
            last_was_doc = true;
            continue;
        }
        last_was_doc = false;
    }
    out
}

fn push_line(out: &mut String, s: &str) {
    out.push_str(s);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_line_and_block_docs_but_not_plain_comments() {
        let src = "//! Crate docs.\n//!\n//! More.\n\n// plain\n//// not doc\n/// Adds one.\n///   indented\nfn f() {}\n/** Block\n * second\n */\nfn g() {}\n/*** not doc */\n";
        let d = extract_doc_comments(src);
        assert_eq!(d, "Crate docs.\n\nMore.\n\nAdds one.\n  indented\n\nBlock\nsecond\n\n");
        assert!(!d.contains("plain") && !d.contains("not doc"));
    }
}
