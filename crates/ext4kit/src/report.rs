//! How errors read: one line per error, each path said once, OS errors as strerror says them.

/// The error's chain on one line, `a: b: c`, without saying a path twice: a context that the
/// next message starts with is dropped (`/d`, `/d: no such file`), and a message that starts
/// with what the line already ends with loses that start (`img:/x`, `/x: no such file`; also
/// `img:/x/`, `/x: not a directory`). OS errors read as strerror does, without "(os error N)".
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let mut msg = strip_os_error(&cause.to_string());
        if let Some(prev) = parts.last() {
            if msg == *prev || msg.starts_with(&format!("{prev}: ")) {
                parts.pop();
            } else if !msg.contains(": ") && names_same(&parts.join(": "), &msg) {
                // A context naming the path the line already names (`img:/x`, then `/x`).
                continue;
            } else if let Some((head, rest)) = msg.split_once(": ") {
                let line = parts.join(": ");
                if !head.is_empty() && (line.ends_with(head) || names_same(&line, head)) {
                    msg = rest.to_string();
                }
            }
        }
        parts.push(msg);
    }
    parts.join(": ")
}

/// Whether `line` ends with path `head` up to trailing `/` and `/.` (`img:/x/.` and `/x`).
fn names_same(line: &str, head: &str) -> bool {
    fn trim(mut p: &str) -> &str {
        loop {
            let t = p
                .strip_suffix("/.")
                .or_else(|| p.strip_suffix('/'))
                .unwrap_or(p);
            if t.len() == p.len() || t.is_empty() {
                return p;
            }
            p = t;
        }
    }
    let (l, h) = (trim(line), trim(head));
    h.starts_with('/') && h.len() > 1 && l.ends_with(h) && l[..l.len() - h.len()].ends_with(':')
}

/// `No such file or directory (os error 2)` -> `no such file or directory`.
fn strip_os_error(msg: &str) -> String {
    let Some(at) = msg.find(" (os error ") else {
        return msg.to_string();
    };
    let rest = &msg[at + " (os error ".len()..];
    let Some(close) = rest.find(')') else {
        return msg.to_string();
    };
    if !rest[..close].bytes().all(|b| b.is_ascii_digit()) {
        return msg.to_string();
    }
    // The OS text (strerror's "No such file or directory") reads lower-case inside a line.
    let head = &msg[..at];
    let start = head.rfind(": ").map_or(0, |i| i + 2);
    let mut out = head[..start].to_string();
    let mut chars = head[start..].chars();
    if let Some(c) = chars.next() {
        out.extend(c.to_lowercase());
        out.push_str(chars.as_str());
    }
    out.push_str(&rest[close + 1..]);
    out
}

pub(crate) fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_a_path_once_and_drops_os_error_numbers() {
        let e = anyhow::Error::from(std::io::Error::from_raw_os_error(libc::ENOENT))
            .context("/x/y")
            .context("img:/x/y");
        assert_eq!(one_line(&e), "img:/x/y: no such file or directory");
        let e = anyhow::anyhow!("/hostname: not a directory").context("a.img:/hostname/");
        assert_eq!(one_line(&e), "a.img:/hostname/: not a directory");
        let e = anyhow::anyhow!("/d/x: not a directory").context("a.img:/d/x/y");
        assert_eq!(one_line(&e), "a.img:/d/x/y: /d/x: not a directory");
        assert_eq!(
            strip_os_error("open: Permission denied (os error 13)"),
            "open: permission denied"
        );
    }
}
