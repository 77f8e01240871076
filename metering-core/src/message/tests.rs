#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::json;

use super::*;

fn good_usage() -> Value {
    json!({
        "api_session_id": "sess-1", "customer_id": "cust-1", "product_code": "speech_transcription",
        "connection_duration_seconds": 12.5, "data_bytes_processed": 1024,
        "audio_duration_seconds": 10.0, "request_count": 3,
        "request_timestamp": "2026-11-23T10:00:00Z", "response_timestamp": "2026-11-23T10:00:12Z",
        "record_id": "rec-1"
    })
}

fn reason(queue: QueueKind, v: &Value) -> String {
    match validate(queue, v.to_string().as_bytes()) {
        Err(MeteringError::Malformed { reason, .. }) => reason,
        other => panic!("expected malformed, got {other:?}"),
    }
}

#[test]
fn valid_usage_record_keeps_record_id_as_key() {
    let m = validate(QueueKind::UsageRecords, good_usage().to_string().as_bytes()).unwrap();
    assert_eq!(m.route, Route::UsageRecords);
    assert_eq!(m.key, "rec-1");
    assert_eq!(m.session_id, "sess-1");
}

#[test]
fn usage_record_without_id_gets_stable_hash_key() {
    let mut v = good_usage();
    v.as_object_mut().unwrap().remove("record_id");
    let raw = v.to_string();
    let a = validate(QueueKind::UsageRecords, raw.as_bytes()).unwrap();
    let b = validate(QueueKind::UsageRecords, raw.as_bytes()).unwrap();
    assert!(a.key.starts_with("sha256:"));
    assert_eq!(a.key, b.key);
    assert_eq!(a.body["record_id"], Value::String(a.key.clone()));
}

#[test]
fn each_kind_of_bad_usage_record_is_refused_with_a_reason() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "api_session_id",
            Value::Null,
            "missing required field api_session_id",
        ),
        ("api_session_id", json!("a/b"), "api_session_id must be"),
        ("customer_id", json!(""), "customer_id is empty"),
        ("product_code", json!("tts"), "product_code must be"),
        ("connection_duration_seconds", json!(-1), "non-negative"),
        ("audio_duration_seconds", json!("10"), "must be a number"),
        ("data_bytes_processed", json!(1.5), "non-negative integer"),
        ("request_count", json!(-3), "non-negative integer"),
        ("request_timestamp", json!("yesterday"), "RFC 3339"),
        (
            "response_timestamp",
            json!("2026-11-23T09:00:00Z"),
            "before request_timestamp",
        ),
        ("record_id", json!(7), "record_id must be a string"),
    ];
    for (field, value, want) in cases {
        let mut v = good_usage();
        if value.is_null() {
            v.as_object_mut().unwrap().remove(field);
        } else {
            v[field] = value;
        }
        let r = reason(QueueKind::UsageRecords, &v);
        assert!(r.contains(want), "{field}: {r}");
    }
}

#[test]
fn non_json_and_non_objects_are_refused() {
    for raw in [&b"not json"[..], b"[1,2]", b"\"s\"", b"\xff\xfe", b""] {
        assert!(validate(QueueKind::UsageRecords, raw).is_err());
    }
    let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
    assert!(validate(QueueKind::QuotaRefresh, &big).is_err());
}

#[test]
fn lifecycle_events_route_by_event() {
    let start = json!({"event": "start", "api_session_id": "s", "customer_id": "c",
        "timestamp": "2026-11-23T10:00:00+01:00"});
    let m = validate(QueueKind::SessionLifecycle, start.to_string().as_bytes()).unwrap();
    assert_eq!(m.route, Route::SessionStart);
    let mut done = start.clone();
    done["event"] = json!("complete");
    let m = validate(QueueKind::SessionLifecycle, done.to_string().as_bytes()).unwrap();
    assert_eq!(m.route, Route::SessionComplete);
    done["event"] = json!("pause");
    assert!(reason(QueueKind::SessionLifecycle, &done).contains("event must be"));
}

#[test]
fn quota_refresh_transaction_id_is_given_or_derived_once() {
    let v = json!({"api_session_id": "s", "customer_id": "c"});
    let raw = v.to_string();
    let a = validate(QueueKind::QuotaRefresh, raw.as_bytes()).unwrap();
    let b = validate(QueueKind::QuotaRefresh, raw.as_bytes()).unwrap();
    assert_eq!(a.key, b.key);
    assert!(uuid::Uuid::parse_str(&a.key).is_ok());
    assert_eq!(a.body["transaction_id"], json!(a.key));
    let given = json!({"api_session_id": "s", "customer_id": "c", "transaction_id": "t-9"});
    let m = validate(QueueKind::QuotaRefresh, given.to_string().as_bytes()).unwrap();
    assert_eq!(m.key, "t-9");
}

#[test]
fn enrichment_adds_the_four_fields() {
    let m = validate(QueueKind::UsageRecords, good_usage().to_string().as_bytes()).unwrap();
    let e = Enrichment {
        server_instance_id: "srv".into(),
        api_server_region: "eu".into(),
        agent_version: "1.2.3".into(),
    };
    let out = m.enriched(&e, Utc::now());
    assert_eq!(out["server_instance_id"], "srv");
    assert_eq!(out["api_server_region"], "eu");
    assert_eq!(out["agent_version"], "1.2.3");
    assert!(out["processing_timestamp"].is_string());
}

#[test]
fn compact_form_enriches_to_the_same_object() {
    let e = Enrichment {
        server_instance_id: "srv \"1\"".into(),
        api_server_region: "eu".into(),
        agent_version: "1.2.3".into(),
    };
    let now = Utc::now();
    let mut with_own = good_usage();
    // A producer-set enrichment field and an extra field: replaced and kept as `enriched` does.
    with_own["agent_version"] = json!("0.0.1");
    with_own["extra"] = json!({"nested": [1, "two", null]});
    let mut no_id = good_usage();
    no_id.as_object_mut().unwrap().remove("record_id");
    let quota = json!({"api_session_id": "s", "customer_id": "c"});
    for (q, v) in [
        (QueueKind::UsageRecords, good_usage()),
        (QueueKind::UsageRecords, with_own),
        (QueueKind::UsageRecords, no_id),
        (QueueKind::QuotaRefresh, quota),
    ] {
        let m = validate(q, v.to_string().as_bytes()).unwrap();
        let want = m.enriched(&e, now);
        let c = m.clone().into_compact();
        assert_eq!(
            (&c.route, &c.session_id, &c.key),
            (&m.route, &m.session_id, &m.key)
        );
        let mut out = Vec::new();
        c.write_enriched(&e.json_tail(now), &mut out);
        assert_eq!(out.len(), c.enriched_len(&e.json_tail(now)));
        let got: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(got, want);
    }
}

/// Both validators on `raw`: the same verdict, reason, key and forwarded object.
fn assert_validators_agree(q: QueueKind, raw: &[u8]) {
    fuzz_validators_agree(q, raw);
}

#[test]
fn flat_validator_agrees_on_edge_cases() {
    let good = good_usage().to_string();
    // The common case takes the flat path (with and without a record_id).
    assert!(validate_flat(QueueKind::UsageRecords, good.as_bytes()).is_some());
    let mut no_id = good_usage();
    no_id.as_object_mut().unwrap().remove("record_id");
    let no_id = no_id.to_string();
    assert!(validate_flat(QueueKind::UsageRecords, no_id.as_bytes()).is_some());
    assert_validators_agree(QueueKind::UsageRecords, no_id.as_bytes());
    let body = good.trim_end_matches('}');
    for extra in [
        r#","extra":1e400"#,
        r#","extra":"\ud800""#,
        r#","extra":[1,{"a":null}]"#,
        r#","k\u0065y":1"#,
        r#","record_id":"rec-2""#,
        r#","agent_version":"x","processing_timestamp":null"#,
        r#","note":"a \"quoted\" \u00e9 \n""#,
        r#","n":-0,"m":18446744073709551616,"f":1.50e3,"b":true"#,
        "",
    ] {
        let raw = format!("{body}{extra}}}");
        for q in QueueKind::ALL {
            assert_validators_agree(q, raw.as_bytes());
        }
    }
    for raw in [
        &b"not json"[..],
        b"[1]",
        b"{}",
        b" {\"a\":1} ",
        b"{\"a\":1}x",
        b"\xff",
    ] {
        for q in QueueKind::ALL {
            assert_validators_agree(q, raw);
        }
    }
}

/// Found by the `metering_message` fuzz target: a float with more digits than an f64 holds.
/// The tree validator re-serializes it, the fast path forwards its text; without correctly
/// rounded parsing (serde_json's `float_roundtrip`) the two forwarded objects differed by one
/// ULP (111.11111111011112 against 111.11111111011111).
#[test]
fn long_floats_are_forwarded_alike_by_both_validators() {
    let raw = br#"{"api_session_id":"s1","customer_id":"c","product_code":"speech_transcription","co$nection_durationc_soends":0.5,"data_bd":111.1111111101111111111111111,"apriytes_processed":10,"audio_duration_seconds":1,"request_count":1,"request_tim%stamp":"2026-11-23T10:00:00Z","rord_id":"r1"}"#;
    for q in QueueKind::ALL {
        fuzz_validators_agree(q, raw);
    }
}

proptest! {
    #[test]
    fn flat_validator_agrees_with_the_tree_validator(
        edits in proptest::collection::vec((0usize..19, 0usize..24), 0..6),
        drop in proptest::collection::vec(0usize..10, 0..3),
    ) {
        const KEYS: [&str; 19] = [
            "api_session_id", "customer_id", "product_code", "connection_duration_seconds",
            "data_bytes_processed", "audio_duration_seconds", "request_count",
            "request_timestamp", "response_timestamp", "record_id", "event", "timestamp",
            "transaction_id", "agent_version", "server_instance_id", "extra", "k\\u0065y",
            "x y", "\u{e9}",
        ];
        const VALUES: [&str; 24] = [
            r#""s1""#, r#""c1""#, r#""speech_transcription""#, r#""2026-11-23T10:00:00Z""#,
            r#""2026-11-23T10:00:01Z""#, r#""start""#, r#""complete""#, "1", "0", "-1", "1.5",
            "1e400", "18446744073709551616", "null", "true", "[1,2]", r#"{"a":1}"#,
            r#""a\"b""#, r#""\ud800""#, r#""\u00e9t\u00e9""#, r#""""#, r#""rec-1""#, "-0",
            r#""2026-11-23T10:00:00+01:00""#,
        ];
        let mut fields: Vec<(String, String)> = good_usage()
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (serde_json::to_string(k).unwrap(), v.to_string()))
            .collect();
        for d in drop {
            if d < fields.len() {
                fields.remove(d);
            }
        }
        for (k, v) in edits {
            // Appended, so a key already present is repeated.
            fields.push((format!("\"{}\"", KEYS[k]), VALUES[v].to_owned()));
        }
        let raw = format!(
            "{{{}}}",
            fields.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(",")
        );
        for q in QueueKind::ALL {
            assert_validators_agree(q, raw.as_bytes());
        }
    }

    #[test]
    fn validators_agree_on_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
        for q in QueueKind::ALL {
            assert_validators_agree(q, &raw);
        }
    }
}

proptest! {
    #[test]
    fn validator_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..512)) {
        for q in QueueKind::ALL {
            let _ = validate(q, &raw);
        }
    }

    #[test]
    fn valid_records_with_random_numbers_pass_and_negatives_fail(
        dur in -1000.0f64..1000.0, bytes in any::<i64>(), count in any::<i32>()
    ) {
        let mut v = good_usage();
        v["connection_duration_seconds"] = json!(dur);
        v["data_bytes_processed"] = json!(bytes);
        v["request_count"] = json!(count);
        let ok = dur >= 0.0 && bytes >= 0 && count >= 0;
        prop_assert_eq!(validate(QueueKind::UsageRecords, v.to_string().as_bytes()).is_ok(), ok);
    }
}
