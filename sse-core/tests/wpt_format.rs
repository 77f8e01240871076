//! The web-platform-tests `eventsource/format-*` cases, reproduced as (input, expected output)
//! pairs and fed to the parser at every chunk split point (and byte by byte).
//!
//! Inputs are what the WPT server sends: `resources/message.py` echoes `message` followed by
//! `"\n\n"` (nothing with `newline=none`) and then one more `"\n"`. Expected outputs are what the
//! tests assert. Where a test reconnects, only the first connection is reproduced.

use sse_core::parser::{EventStreamParser, ParsedEvent, ParsedItem};

fn ev(event_type: &str, data: &str, id: &str) -> ParsedItem {
    ParsedItem::Event(ParsedEvent {
        event_type: event_type.into(),
        data: data.into(),
        last_event_id: id.into(),
    })
}

fn msg(data: &str) -> ParsedItem {
    ev("message", data, "")
}

/// message.py framing.
fn served(message: &[u8], newline_none: bool) -> Vec<u8> {
    let mut v = message.to_vec();
    if !newline_none {
        v.extend_from_slice(b"\n\n");
    }
    v.push(b'\n');
    v
}

fn cases() -> Vec<(&'static str, Vec<u8>, Vec<ParsedItem>)> {
    let long = "x".repeat(2 * 1024);
    let comments =
        format!("data:1\r:\0\n:\r\ndata:2\n:{long}\rdata:3\n:data:fail\r:{long}\ndata:4\n");
    vec![
        // format-bom.htm: one BOM stripped; the second, mid-stream, makes "\u{FEFF}data" an unknown field.
        ("format-bom", served(b"\xEF\xBB\xBFdata:1\n\n\xEF\xBB\xBFdata:2\n\ndata:3", false), vec![msg("1"), msg("3")]),
        // format-bom-2.htm: only one leading BOM is stripped.
        ("format-bom-2", served(b"\xEF\xBB\xBF\xEF\xBB\xBFdata:1\n\ndata:2\n\ndata:3", false), vec![msg("2"), msg("3")]),
        // format-comments.htm ("comment fest"), newline=none.
        ("format-comments", served(comments.as_bytes(), true), vec![msg("1\n2\n3\n4")]),
        // format-data-before-final-empty-line.htm, newline=none: the unfinished last event (and its id) is dropped.
        (
            "format-data-before-final-empty-line",
            served(b"retry:1000\ndata:test1\n\nid:test\ndata:test2", true),
            vec![ParsedItem::Retry(1000), msg("test1")],
        ),
        // format-field-data.htm
        ("format-field-data", served(b"data:\n\ndata\ndata\n\ndata:test", false), vec![msg(""), msg("\n"), msg("test")]),
        // format-field-event.htm
        ("format-field-event", served(b"event:test\ndata:x\n\ndata:x", false), vec![ev("test", "x", ""), msg("x")]),
        // format-field-event-empty.htm: "event: " is the empty type, so "message".
        ("format-field-event-empty", served(b"event: \ndata:data", false), vec![msg("data")]),
        // format-field-id.htm / format-field-id-2.htm (resources/last-event-id.py, first connection).
        (
            "format-field-id",
            b"id: \xE2\x80\xA6\nretry: 200\ndata: hello\n\n".to_vec(),
            vec![ParsedItem::Retry(200), ev("message", "hello", "\u{2026}")],
        ),
        // format-field-id-3.htm: an empty id resets the last event ID.
        (
            "format-field-id-3",
            b"id: 1\ndata: hello\n\nid:\ndata: world\n\n".to_vec(),
            vec![ev("message", "hello", "1"), ev("message", "world", "")],
        ),
        // format-field-id-null.htm (current standard): an id containing U+0000 is ignored.
        (
            "format-field-id-null",
            b"id: a\ndata: one\n\nid: \0\0\ndata: hello\n\n".to_vec(),
            vec![ev("message", "one", "a"), ev("message", "hello", "a")],
        ),
        // format-field-parse.htm
        (
            "format-field-parse",
            served(b"data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n", false),
            vec![msg("\0\n 2\n1\n3\n\n4")],
        ),
        // format-field-retry.htm: leading zeros are decimal, not octal.
        ("format-field-retry", served(b"retry:02000\ndata:x", false), vec![ParsedItem::Retry(2000), msg("x")]),
        // format-field-retry-bogus.htm: "1000x" is not all digits and is ignored.
        ("format-field-retry-bogus", served(b"retry:2000\nretry:1000x\ndata:x", false), vec![ParsedItem::Retry(2000), msg("x")]),
        // format-field-retry-empty.htm: "retry" with no value is ignored.
        ("format-field-retry-empty", served(b"retry\ndata:test", false), vec![msg("test")]),
        // format-field-unknown.htm
        (
            "format-field-unknown",
            served(b"data:test\r data\ndata\nfoobar:xxx\njustsometext\n:thisisacommentyay\ndata:test", false),
            vec![msg("test\n\ntest")],
        ),
        // format-leading-space.htm: only one leading space is removed; a tab is kept.
        ("format-leading-space", served(b"data:\ttest\rdata: \ndata:test", false), vec![msg("\ttest\n\ntest")]),
        // format-newlines.htm: CRLF, LF and CR all end lines.
        ("format-newlines", served(b"data:test\r\ndata\ndata:test\r\n\r", false), vec![msg("test\n\ntest")]),
        // format-null-character.html
        ("format-null-character", served(b"data:\0\n\n", false), vec![msg("\0")]),
        // format-utf-8.htm: always UTF-8, whatever the charset parameter.
        ("format-utf-8", served(b"data:ok\xE2\x80\xA6", false), vec![msg("ok\u{2026}")]),
        // Not WPT: the issue's extra rules. "+1000" is not all digits.
        ("retry-plus-sign", b"retry:+1000\ndata:x\n\n".to_vec(), vec![msg("x")]),
        // Invalid UTF-8 is replaced, never an error (including a sequence cut by a line end).
        ("invalid-utf8", b"data:a\xFFb\ndata:\xE2\x82\n\n".to_vec(), vec![msg("a\u{FFFD}b\n\u{FFFD}")]),
    ]
}

fn parse_split(input: &[u8], splits: &[usize]) -> Vec<ParsedItem> {
    let mut parser = EventStreamParser::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &s in splits {
        parser.feed(&input[start..s], &mut out);
        start = s;
    }
    parser.feed(&input[start..], &mut out);
    parser.finish();
    out
}

#[test]
fn wpt_format_cases_at_every_split_point() {
    for (name, input, expected) in cases() {
        assert_eq!(parse_split(&input, &[]), expected, "{name}: whole input");
        for split in 0..=input.len() {
            assert_eq!(
                parse_split(&input, &[split]),
                expected,
                "{name}: split at {split}"
            );
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(
            parse_split(&input, &every),
            expected,
            "{name}: byte by byte"
        );
    }
}

#[test]
fn wpt_format_cases_at_every_pair_of_split_points_for_short_inputs() {
    for (name, input, expected) in cases() {
        if input.len() > 120 {
            continue;
        }
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(
                    parse_split(&input, &[a, b]),
                    expected,
                    "{name}: split at {a},{b}"
                );
            }
        }
    }
}
