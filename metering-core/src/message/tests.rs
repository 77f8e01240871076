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
