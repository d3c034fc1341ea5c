//! Writes the seed corpus (`corpus/<target>/seed-*`) from valid examples of
//! each input kind, so the fuzzer starts from inputs that get past the first
//! checks. Run from `fuzz/`: `cargo run --bin seeds`.
use std::path::Path;
use tandem_fuzz::event::{BlobHash, Event, FlagOp, Flags, Id};
use tandem_fuzz::frame::{Frame, WireBlob, WireEntry};
use wal::{segment, Entry, Origin, GENESIS};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("create corpus dir");
    std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write seed");
}

fn main() {
    let events = [
        Event::UserCreated {
            user: "a@example.org".into(),
            password_hash: "$argon2id$x".into(),
        },
        Event::MailboxCreated {
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            name: "INBOX/Sub".into(),
            uidvalidity: 1700000000,
            special_use: None,
        },
        Event::MessageAppended {
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            uid: 42,
            guid: Id([9; 16]),
            blob: BlobHash::of(b"Subject: x\r\n\r\nbody\r\n"),
            size: 21,
            internal_date: 1_764_000_000,
            tz_minutes: 60,
            flags: Flags::new(["\\Seen", "$Label1"]),
        },
        Event::FlagsChanged {
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            messages: vec![(42, Id([9; 16]))],
            op: FlagOp::Add,
            flags: Flags::new(["\\Flagged"]),
        },
        Event::Expunged {
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            messages: vec![(42, Id([9; 16]))],
        },
        Event::ConfigSet {
            key: "imap.max_connections_per_user".into(),
            value: "20".into(),
        },
    ];
    for (i, e) in events.iter().enumerate() {
        write("event", &i.to_string(), &e.encode());
    }
    // A pending append (UID 0) and the master's placement of it; only for
    // the event target, so the log seeds below stay as they were.
    let placement = [
        Event::MessageAppended {
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            uid: 0,
            guid: Id([10; 16]),
            blob: BlobHash::of(b"Subject: y\r\n\r\nbody\r\n"),
            size: 21,
            internal_date: 1_764_000_001,
            tz_minutes: 0,
            flags: Flags::default(),
        },
        Event::MessagePlaced {
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            guid: Id([10; 16]),
            uid: 43,
        },
    ];
    for (i, e) in placement.iter().enumerate() {
        write("event", &(events.len() + i).to_string(), &e.encode());
    }
    // A side file set and removed; only for the event target too.
    let side = [
        Event::SideFileSet {
            dir: "certs".into(),
            name: "fullchain.pem".into(),
            hash: BlobHash::of(b"-----BEGIN CERTIFICATE-----\n"),
            mode: 0o640,
            body: b"-----BEGIN CERTIFICATE-----\n".to_vec(),
        },
        Event::SideFileRemoved {
            dir: "/etc/tandem/certs".into(),
            name: "old.pem".into(),
        },
    ];
    for (i, e) in side.iter().enumerate() {
        write("event", &(events.len() + placement.len() + i).to_string(), &e.encode());
    }
    // A quota set; only for the event target too.
    let quota = Event::QuotaSet {
        user: "a@example.org".into(),
        storage_kib: Some(1024),
        messages: None,
    };
    write("event", &(events.len() + placement.len() + side.len()).to_string(), &quota.encode());
    // Resolutions that carry their author's epoch; only for the event target.
    let epoch = [
        Event::MessagesMovedInEpoch {
            epoch: 1,
            user: "a@example.org".into(),
            from: Id([7; 16]),
            to: Id([7; 16]),
            resolves: vec![42],
            moves: vec![(42, Id([9; 16]), 44)],
        },
        Event::MessagePlacedInEpoch {
            epoch: 1,
            user: "a@example.org".into(),
            mailbox: Id([7; 16]),
            guid: Id([10; 16]),
            uid: 45,
        },
    ];
    for (i, e) in epoch.iter().enumerate() {
        write("event", &(events.len() + placement.len() + side.len() + 1 + i).to_string(), &e.encode());
    }
    // A slave's report of its collision marks; only for the event target.
    let report = Event::ConflictsReported {
        user: "a@example.org".into(),
        mailbox: Id([7; 16]),
        uids: vec![42, 300],
    };
    write(
        "event",
        &(events.len() + placement.len() + side.len() + 1 + epoch.len()).to_string(),
        &report.encode(),
    );

    let origin = Origin(0x0123_4567_89ab_cdef);
    let mut prev = GENESIS;
    let mut entries = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let entry = Entry::new(&prev, origin, i as u64 + 1, 1000 + i as u64, e.encode());
        prev = entry.hash;
        let mut rec = origin.0.to_be_bytes().to_vec();
        rec.extend_from_slice(&entry.seq.to_be_bytes());
        rec.extend_from_slice(&entry.encode_value());
        write("wal_record", &i.to_string(), &rec);
        entries.push(entry);
    }
    write("wal_segment", "all", &segment::encode(&GENESIS, &entries));
    write("wal_segment", "tail", &segment::encode(&entries[2].hash, &entries[3..]));

    let wire: Vec<WireEntry> = entries
        .iter()
        .map(|e| WireEntry {
            origin: e.origin.0,
            seq: e.seq,
            hlc: e.hlc,
            hash: e.hash,
            payload: e.payload.clone(),
        })
        .collect();
    let body = b"Subject: x\r\n\r\nbody\r\n".to_vec();
    let frames = [
        Frame::Vector {
            vector: [(origin.0, 6), (7, 9)].into(),
            hashes: vec![(origin.0, entries[5].hash)],
        },
        Frame::Chunk {
            hash: [3; 32],
            total: 10,
            bytes: b"0123456789".to_vec(),
        },
        Frame::Batch {
            id: 1,
            entries: wire,
            blobs: vec![WireBlob {
                hash: *blake3::hash(&body).as_bytes(),
                body,
            }],
        },
        Frame::Ack {
            id: 1,
            vector: [(origin.0, 6)].into(),
        },
        Frame::Query {
            id: 2,
            hashes: vec![[1; 32], [2; 32]],
        },
        Frame::Held {
            id: 2,
            held: vec![true, false],
        },
        Frame::Refused { reason: "no".into() },
        Frame::Alive {
            node: "node-a".into(),
            epoch: 2,
            stamp: 0x0196_5a3c_1e00_0001,
            holds: [(origin.0, 6), (7, 9)].into(),
        },
    ];
    for (i, f) in frames.iter().enumerate() {
        write("repl_frame", &i.to_string(), &f.encode()[4..]);
    }

    write(
        "lmtp_session",
        "deliver",
        b"\x21LHLO mx.example\r\nMAIL FROM:<a@example.org> BODY=8BITMIME SIZE=100\r\nRCPT TO:<u@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\nSubject: hi\r\n\r\n..dot\r\n.\r\nBDAT 5 LAST\r\nhelloRSET\r\nNOOP\r\nQUIT\r\n",
    );
    write(
        "lmtp_session",
        "bdat",
        b"\x10LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<u@example.org>\r\nBDAT 3\r\nabcBDAT 0 LAST\r\nVRFY x\r\nHELO y\r\n\r\nQUIT\r\n",
    );
    write(
        "imap_command",
        "session",
        b"a1 CAPABILITY\r\na2 LOGIN {5}\r\nalice {6+}\r\nsecret\r\na3 LIST \"\" \"*\"\r\na4 SELECT INBOX\r\na5 UID FETCH 1:* (FLAGS ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\na6 STORE 1 +FLAGS (\\Seen $Label1)\r\na7 APPEND Sent (\\Seen) {11+}\r\nSubject: x\r\na8 SEARCH CHARSET UTF-8 SINCE 1-Jan-2026 FROM \"bob\"\r\na9 CREATE &ZeVnLIqe-/x\r\na10 IDLE\r\nDONE\r\na11 LOGOUT\r\n",
    );
    write(
        "imap_command",
        "extensions",
        "b1 LOGIN alice secret\r\nb2 ENABLE UTF8=ACCEPT CONDSTORE\r\nb3 CREATE \"Entwürfe\"\r\nb4 LIST (SUBSCRIBED RECURSIVEMATCH) \"\" (\"INBOX\" %/x {3+}\r\nabc) RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))\r\nb5 APPEND Sent (\\Seen) \" 3-Feb-2026 10:00:00 +0100\" {2+}\r\nhi {3+}\r\nyou UTF8 (~{2+}\r\né)\r\nb6 SELECT INBOX\r\nb7 UID SEARCH RETURN (MIN MAX COUNT ALL) SUBJECT \"grüße\"\r\nb8 UID SORT (REVERSE DATE SUBJECT) UTF-8 FROM bob\r\nb9 THREAD REFERENCES \"US-ASCII\" ALL\r\nb10 LOGOUT\r\n".as_bytes(),
    );
    write(
        "imap_command",
        "binary",
        b"c1 LOGIN alice secret\r\nc2 APPEND INBOX (\\Seen) ~{5}\r\na\x00b\r\xff c3 APPEND INBOX ~{3+}\r\n\x00\x00\x00\r\nc4 SELECT INBOX\r\nc5 FETCH 1:* (FLAGS BINARY.PEEK[1.2]<0.1024> BINARY.SIZE[2] BODY.PEEK[HEADER.FIELDS (BINARY[1] UID)])\r\nc6 UID FETCH 1 BINARY[]\r\nc7 FETCH 1 binary[3]<4294967295.1>\r\nc8 LOGOUT\r\n",
    );
    write(
        "imap_command",
        "condstore",
        b"d1 LOGIN alice secret\r\nd2 ENABLE CONDSTORE QRESYNC\r\nd3 STATUS INBOX (HIGHESTMODSEQ MESSAGES)\r\nd4 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1:3,5 41,43:44,46)) CONDSTORE)\r\nd5 EXAMINE {5+}\r\nINBOX (CONDSTORE)\r\nd6 UID FETCH 1:* (FLAGS MODSEQ BODY.PEEK[HEADER.FIELDS (MODSEQ)]) (CHANGEDSINCE 12345 VANISHED)\r\nd7 FETCH 1:* FAST (CHANGEDSINCE 9223372036854775807)\r\nd8 UID STORE 1:3 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\nd9 SEARCH OR MODSEQ \"/flags/\\\\draft\" all 620162338 NOT MODSEQ 5 SEEN\r\nd10 UID SEARCH RETURN (COUNT) MODSEQ 18446744073709551616\r\nd11 SORT (ARRIVAL) UTF-8 MODSEQ 0\r\nd12 SELECT INBOX (QRESYNC (1 5 1:* (1:3 1:4)))\r\nd13 LOGOUT\r\n",
    );
    write(
        "imap_command",
        "rev2",
        b"e1 LOGIN alice secret\r\ne2 ENABLE IMAP4rev2\r\ne3 STATUS INBOX (SIZE DELETED MESSAGES)\r\ne4 SELECT INBOX\r\ne5 SEARCH RETURN (SAVE MIN) CHARSET UTF-8 OR $ (NOT $) SUBJECT $ HEADER X-A $\r\ne6 UID FETCH $ (UID FLAGS)\r\ne7 UID STORE $ +FLAGS ($Junk $Forwarded)\r\ne8 UID SEARCH UID $ MODSEQ \"/flags/$junk\" all 5 BODY {1+}\r\n$\r\ne9 UID MOVE $ Trash\r\ne10 UID EXPUNGE $\r\ne11 UID SORT (DATE) UTF-8 $\r\ne12 LOGOUT\r\n",
    );
    write(
        "mime",
        "global",
        b"Subject: outer\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/global\r\n\r\nSubject: inner\r\nContent-Type: message/global\r\n\r\nSubject: innermost\r\n\r\nx\r\n--b--\r\n",
    );
    write(
        "mime",
        "multipart",
        b"From: \"B\" <b@example.org>\r\nTo: a@example.org\r\nSubject: =?utf-8?q?caf=C3=A9?=\r\nDate: Tue, 1 Dec 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xx\"\r\n\r\npre\r\n--xx\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\ncaf=E9\r\n--xx\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n--xx\r\nContent-Type: application/octet-stream; name*=utf-8''%C3%A9.bin\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--xx--\r\n",
    );
    println!("seeds written under corpus/");
}
