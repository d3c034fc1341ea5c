//! Reading and writing mail files for import and export: Maildir++ trees
//! and mbox (mboxrd). Pure functions where possible; the CLI does the I/O.
//!
//! Messages are stored with CRLF line endings (what IMAP serves); bare LF in
//! a file is converted on import, so a message's identity is the blake3 of
//! its CRLF form.

use std::path::{Path, PathBuf};

/// Convert bare LF line endings to CRLF; CRLF stays as it is.
pub fn to_crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut prev = 0u8;
    for &b in bytes {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// IMAP flags from the info part of a Maildir file name (`...:2,FRS`).
pub fn maildir_flags(file_name: &str) -> Vec<String> {
    let Some((_, info)) = file_name.rsplit_once(":2,") else {
        return Vec::new();
    };
    let mut flags = Vec::new();
    for c in info.chars() {
        let f = match c {
            'D' => "\\Draft",
            'F' => "\\Flagged",
            'R' => "\\Answered",
            'S' => "\\Seen",
            'T' => "\\Deleted",
            _ => continue,
        };
        flags.push(f.to_string());
    }
    flags
}

/// The info suffix for a Maildir file name, from IMAP flags (sorted letters).
pub fn maildir_info(flags: &[String]) -> String {
    let mut letters: Vec<char> = flags
        .iter()
        .filter_map(|f| match f.as_str() {
            "\\Draft" => Some('D'),
            "\\Flagged" => Some('F'),
            "\\Answered" => Some('R'),
            "\\Seen" => Some('S'),
            "\\Deleted" => Some('T'),
            _ => None,
        })
        .collect();
    letters.sort();
    format!(":2,{}", letters.into_iter().collect::<String>())
}

/// Folder name of a Maildir++ subdirectory (`.Archive.2024` -> `Archive/2024`).
pub fn maildir_folder(dir_name: &str) -> Option<String> {
    let rest = dir_name.strip_prefix('.')?;
    if rest.is_empty() || rest == "." {
        return None;
    }
    Some(rest.split('.').collect::<Vec<_>>().join("/"))
}

/// Size of `bytes` once [`to_crlf`] has converted them.
pub fn crlf_len(bytes: &[u8]) -> usize {
    let bare = bytes
        .iter()
        .enumerate()
        .filter(|(i, b)| **b == b'\n' && (*i == 0 || bytes[i - 1] != b'\r'))
        .count();
    bytes.len() + bare
}

/// Maildir++ subdirectory name of a folder (`Archive/2024` ->
/// `.Archive.2024`; `None` for INBOX, which is the root), or why the folder
/// has none. Maildir++ separates levels with `.`, so a level that contains
/// a dot (`.`, `..`, `.hidden`, `a.b`) or is empty would name another
/// folder, or a directory outside the tree; such names are refused, never
/// rewritten.
pub fn maildir_dir(folder: &str) -> Result<Option<String>, String> {
    if folder == "INBOX" {
        return Ok(None);
    }
    for level in folder.split('/') {
        if level.is_empty() {
            return Err("it has an empty hierarchy level".into());
        }
        if level.contains('.') {
            return Err(format!("its level {level:?} contains '.', the Maildir++ hierarchy separator"));
        }
        if level.chars().any(|c| c.is_control()) {
            return Err(format!("its level {level:?} contains a control character"));
        }
    }
    let dir = format!(".{}", folder.replace('/', "."));
    // One plain directory name, whatever else the platform takes for a
    // separator or a special name.
    let mut parts = Path::new(&dir).components();
    match (parts.next(), parts.next()) {
        (Some(std::path::Component::Normal(n)), None) if n == std::ffi::OsStr::new(&dir) => Ok(Some(dir)),
        _ => Err(format!("{dir:?} is not a single directory name")),
    }
}

/// One message file found in a Maildir.
#[derive(Debug, Clone)]
pub struct MaildirFile {
    pub folder: String,
    pub path: PathBuf,
    pub flags: Vec<String>,
}

/// Every message of a Maildir++ tree: `cur/` and `new/` of the root (INBOX)
/// and of every `.Sub` folder, in a stable order. `tmp/` is skipped.
pub fn scan_maildir(root: &Path) -> std::io::Result<Vec<MaildirFile>> {
    let mut folders: Vec<(String, PathBuf)> = vec![("INBOX".into(), root.to_path_buf())];
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if !e.file_type()?.is_dir() {
            continue;
        }
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(f) = maildir_folder(&name) {
            folders.push((f, e.path()));
        }
    }
    folders.sort();
    let mut out = Vec::new();
    for (folder, dir) in folders {
        for sub in ["cur", "new"] {
            let d = dir.join(sub);
            let Ok(rd) = std::fs::read_dir(&d) else { continue };
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.path())
                .collect();
            files.sort();
            for path in files {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let flags = if sub == "cur" { maildir_flags(&name) } else { Vec::new() };
                out.push(MaildirFile {
                    folder: folder.clone(),
                    path,
                    flags,
                });
            }
        }
    }
    Ok(out)
}

/// One message split out of an mbox file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxMessage {
    /// Body with `>From ` quoting undone (mboxrd) and CRLF line endings.
    pub body: Vec<u8>,
    pub flags: Vec<String>,
    /// From the `From ` line, seconds since the epoch (UTC), if it parses.
    pub date: Option<i64>,
}

/// Split an mbox (mboxrd) into messages. Flags come from `Status:` and
/// `X-Status:` headers, the date from the separator line.
pub fn split_mbox(data: &[u8]) -> Vec<MboxMessage> {
    let mut out = Vec::new();
    let mut cur: Option<(Option<i64>, Vec<&[u8]>)> = None;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if line.starts_with(b"From ") {
            if let Some((date, lines)) = cur.take() {
                out.push(finish_mbox(date, lines));
            }
            cur = Some((parse_from_line_date(line), Vec::new()));
            continue;
        }
        if let Some((_, lines)) = cur.as_mut() {
            lines.push(line);
        }
    }
    if let Some((date, lines)) = cur.take() {
        out.push(finish_mbox(date, lines));
    }
    out
}

fn finish_mbox(date: Option<i64>, mut lines: Vec<&[u8]>) -> MboxMessage {
    // The blank line before the next separator belongs to the mbox format.
    if let Some(last) = lines.last() {
        if *last == b"\n" || *last == b"\r\n" {
            lines.pop();
        }
    }
    let mut body = Vec::new();
    let mut flags = Vec::new();
    let mut in_header = true;
    for l in lines {
        if in_header {
            if l == b"\n" || l == b"\r\n" {
                in_header = false;
            } else if let Some(v) = header_value(l, b"status:") {
                if v.contains(&b'R') {
                    flags.push("\\Seen".to_string());
                }
                continue;
            } else if let Some(v) = header_value(l, b"x-status:") {
                for (c, f) in [(b'A', "\\Answered"), (b'F', "\\Flagged"), (b'D', "\\Deleted"), (b'T', "\\Draft")] {
                    if v.contains(&c) {
                        flags.push(f.to_string());
                    }
                }
                continue;
            }
        }
        let stripped = l.iter().take_while(|b| **b == b'>').count();
        if stripped > 0 && l[stripped..].starts_with(b"From ") {
            body.extend_from_slice(&l[1..]);
        } else {
            body.extend_from_slice(l);
        }
    }
    MboxMessage {
        body: to_crlf(&body),
        flags,
        date,
    }
}

fn header_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    if line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name) {
        Some(&line[name.len()..])
    } else {
        None
    }
}

/// Date of an mbox separator: `From sender Tue Nov 14 22:13:20 2023`.
pub fn parse_from_line_date(line: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(line).ok()?.trim_end();
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() < 7 {
        return None;
    }
    let n = parts.len();
    let (mon, day, time, year) = (parts[n - 4], parts[n - 3], parts[n - 2], parts[n - 1]);
    let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let m = months.iter().position(|x| *x == mon)? as u32 + 1;
    let d: u32 = day.parse().ok()?;
    let y: i32 = year.parse().ok()?;
    let hms: Vec<u32> = time.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&d) || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y } as i64;
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_conversion() {
        assert_eq!(to_crlf(b"a\nb\r\nc\n"), b"a\r\nb\r\nc\r\n");
        assert_eq!(to_crlf(b""), b"");
    }

    #[test]
    fn maildir_names() {
        assert_eq!(
            maildir_flags("1700000000.M1P2.host,S=10:2,FRS"),
            vec!["\\Flagged", "\\Answered", "\\Seen"]
        );
        assert!(maildir_flags("1700000000.M1P2.host").is_empty());
        assert_eq!(maildir_info(&["\\Seen".into(), "\\Flagged".into(), "$Junk".into()]), ":2,FS");
        assert_eq!(maildir_folder(".Archive.2024").as_deref(), Some("Archive/2024"));
        assert_eq!(maildir_folder("cur"), None);
        assert_eq!(maildir_dir("Archive/2024"), Ok(Some(".Archive.2024".to_string())));
        assert_eq!(maildir_dir("INBOX"), Ok(None));
        assert_eq!(maildir_dir("Entwürfe"), Ok(Some(".Entwürfe".to_string())));
        for bad in [".", "..", "...", ".hidden", "a/..", "../x", "a.b", "a//b", "", "a/", "a\u{0}b"] {
            assert!(maildir_dir(bad).is_err(), "{bad:?} was given a directory");
        }
        assert_eq!(crlf_len(b"a\nb\r\n\n"), 8);
        assert_eq!(crlf_len(b"\n"), 2);
        assert_eq!(crlf_len(b""), 0);
        let sample = b"x\r\n\ny\n\r\n";
        assert_eq!(crlf_len(sample), to_crlf(sample).len());
    }

    #[test]
    fn mbox_split_unquotes_and_reads_flags() {
        let mbox = b"From MAILER-DAEMON Tue Nov 14 22:13:20 2023\nSubject: a\nStatus: RO\nX-Status: F\n\nline\n>From here\n>>From there\n\nFrom x@y Wed Nov 15 00:00:00 2023\nSubject: b\n\nbody\n";
        let m = split_mbox(mbox);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].body, b"Subject: a\r\n\r\nline\r\nFrom here\r\n>From there\r\n");
        assert_eq!(m[0].flags, vec!["\\Seen", "\\Flagged"]);
        assert_eq!(m[0].date, Some(1_700_000_000));
        assert_eq!(m[1].body, b"Subject: b\r\n\r\nbody\r\n");
        assert_eq!(m[1].date, Some(1_700_006_400));
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
        assert_eq!(parse_from_line_date(b"From a Thu Jan  1 00:00:00 1970\n"), Some(0));
        assert_eq!(parse_from_line_date(b"From a garbage\n"), None);
    }
}
