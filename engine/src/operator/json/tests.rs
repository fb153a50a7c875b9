//! Field paths against the documents that broke the old text scanner (issue 9) and the rules the
//! module docs promise: nesting, escapes, repeated keys, arrays, malformed input.

use super::{json_number, JsonPath, Skip};

#[track_caller]
fn number(json: &str, path: &str) -> Result<f64, Skip> {
    let parsed = JsonPath::parse(path).expect("valid path");
    let got = parsed.number(json.as_bytes());
    // The ad hoc helper agrees with the parsed path.
    assert_eq!(json_number(json.as_bytes(), path), got.ok(), "json_number on {json}");
    got
}

#[track_caller]
fn key(json: &str, path: &str) -> Result<String, Skip> {
    let mut out = b"stale".to_vec();
    JsonPath::parse(path)
        .expect("valid path")
        .key_into(json.as_bytes(), &mut out)
        .map(|()| String::from_utf8(out).expect("utf-8"))
}

/// Regression (issue 9): the old scanner stopped at the first `"v"`, here a string value, so
/// `{"unit":"v","v":-9.56}` gave nothing and 298 records of a workload were silently skipped. The
/// parser compares keys, never text inside values.
#[test]
fn a_string_holding_the_fields_name_is_not_the_field() {
    assert_eq!(number(r#"{"unit":"v","v":-9.56}"#, "v"), Ok(-9.56));
    assert_eq!(number(r#"{"note":"\"v\": 5","v":6}"#, "v"), Ok(6.0));
    assert_eq!(number(r#"{"v\"":1,"v":2}"#, "v"), Ok(2.0));
}

/// Regression (issue 9): the old scanner read a nested field of the same name first.
#[test]
fn nested_fields_are_reached_by_path_only() {
    let doc = r#"{"a":{"v":1,"b":{"v":3}},"v":2}"#;
    assert_eq!(number(doc, "v"), Ok(2.0));
    assert_eq!(number(doc, "a.v"), Ok(1.0));
    assert_eq!(number(doc, "a.b.v"), Ok(3.0));
    assert_eq!(number(doc, "a.b.w"), Err(Skip::NoField));
    assert_eq!(number(doc, "v.x"), Err(Skip::NoField), "below a number there is nothing");
    assert_eq!(number(doc, "a"), Err(Skip::NotANumber), "an object is not a number");
}

#[test]
fn causes_are_told_apart() {
    assert_eq!(number(r#"{"v":"12"}"#, "v"), Err(Skip::NotANumber));
    assert_eq!(number(r#"{"v":null}"#, "v"), Err(Skip::NotANumber));
    assert_eq!(number(r#"{"v":true}"#, "v"), Err(Skip::NotANumber));
    assert_eq!(number(r#"{"v":[1]}"#, "v"), Err(Skip::NotANumber));
    assert_eq!(number(r#"{"w":1}"#, "v"), Err(Skip::NoField));
    assert_eq!(number(r#"[1,2]"#, "v"), Err(Skip::NoField));
    assert_eq!(number(r#"7"#, "v"), Err(Skip::NoField));
    for bad in [r#"{"v":1,"#, r#"{"v":1} x"#, r#"{"v":01}"#, "", "v=1", r#"{"v":1,"w":tru}"#] {
        assert_eq!(number(bad, "v"), Err(Skip::NotJson), "{bad:?}");
    }
}

#[test]
fn escapes_whitespace_numbers_and_repeats() {
    assert_eq!(number(r#"{"\u0076":3}"#, "v"), Ok(3.0), "an escaped key is compared unescaped");
    assert_eq!(number(" {\n \"v\" :\t-3.5e2 } ", "v"), Ok(-350.0));
    assert_eq!(number(r#"{"v":18446744073709551615}"#, "v"), Ok(18446744073709551615.0));
    assert_eq!(number(r#"{"v":-9223372036854775808}"#, "v"), Ok(-9223372036854775808.0));
    assert_eq!(number(r#"{"v":0.1}"#, "v"), Ok(0.1));
    assert_eq!(number(r#"{"v":1,"v":2}"#, "v"), Ok(2.0), "the last occurrence wins");
    assert_eq!(number(r#"{"a":{"v":1},"a":{"w":2}}"#, "a.v"), Err(Skip::NoField));
    let unicode = r#"{"naïve ✓":4,"v":"é\n"}"#;
    assert_eq!(number(unicode, "naïve ✓"), Ok(4.0));
}

#[test]
fn digits_index_arrays_and_name_keys() {
    let doc = r#"{"items":[{"v":1},{"v":2},[5,6]],"0":{"v":9}}"#;
    assert_eq!(number(doc, "items.1.v"), Ok(2.0));
    assert_eq!(number(doc, "items.2.1"), Ok(6.0));
    assert_eq!(number(doc, "items.3.v"), Err(Skip::NoField));
    assert_eq!(number(doc, "items.x"), Err(Skip::NoField));
    assert_eq!(number(doc, "0.v"), Ok(9.0));
}

#[test]
fn keys_from_fields() {
    assert_eq!(key(r#"{"k":"a\"b","v":1}"#, "k"), Ok("a\"b".to_string()));
    assert_eq!(key(r#"{"k":12}"#, "k"), Ok("12".to_string()));
    assert_eq!(key(r#"{"k":12.5}"#, "k"), Ok("12.5".to_string()));
    assert_eq!(key(r#"{"k":-3}"#, "k"), Ok("-3".to_string()));
    assert_eq!(key(r#"{"k":true}"#, "k"), Ok("true".to_string()));
    assert_eq!(key(r#"{"k":null}"#, "k"), Err(Skip::NotANumber));
    assert_eq!(key(r#"{"k":{"a":1}}"#, "k"), Err(Skip::NotANumber));
    assert_eq!(key(r#"{"j":"x"}"#, "k"), Err(Skip::NoField));
    assert_eq!(key(r#"{"k":"x""#, "k"), Err(Skip::NotJson));
}

#[test]
fn integer_keys_keep_their_digits_and_other_numbers_are_shortest() {
    for (doc, want) in [
        (r#"{"k":18446744073709551616}"#, "18446744073709551616"),
        (r#"{"k":18446744073709551617}"#, "18446744073709551617"),
        (r#"{"k":-99999999999999999999999}"#, "-99999999999999999999999"),
        (r#"{"k": 7 }"#, "7"),
        (r#"{"k":-0}"#, "-0"),
        (r#"{"k":[1,{"k":2}]}"#, ""),
        (r#"{"k":12.0}"#, "12"),
        (r#"{"k":1e2}"#, "100"),
        (r#"{"k":1e20}"#, "100000000000000000000"),
        (r#"{"k":1e21}"#, "1e21"),
        (r#"{"k":-1.5e300}"#, "-1.5e300"),
        (r#"{"k":0.000001}"#, "0.000001"),
        (r#"{"k":1e-7}"#, "1e-7"),
        (r#"{"k":0.0}"#, "0"),
    ] {
        let got = key(doc, "k");
        if want.is_empty() {
            assert_eq!(got, Err(Skip::NotANumber), "{doc}");
        } else {
            assert_eq!(got, Ok(want.to_string()), "{doc}");
        }
    }
    assert_eq!(key(r#"{"k":"\u00e9"}"#, "k"), Ok("é".to_string()), "an escaped string key");
    assert_eq!(key(r#"{"k":1e400}"#, "k"), Err(Skip::NotJson), "out of the f64 range");
}

#[test]
fn damage_anywhere_makes_the_document_not_json() {
    let damaged: [&[u8]; 8] = [
        b"{\"s\":\"\xff\xfe\",\"v\":1}",
        b"{\"\xff\":1,\"v\":1}",
        br#"{"s":"\ud800","v":1}"#,
        br#"{"s":"\udc00x","v":1}"#,
        br#"{"big":1e400,"v":1}"#,
        br#"{"a":[{"b":-1e309}],"v":1}"#,
        br#"{"v":1,"after":"\ud800"}"#,
        br#"{"v":1,"after":[1e999]}"#,
    ];
    let path = JsonPath::parse("v").expect("path");
    for doc in damaged {
        assert!(serde_json::from_slice::<serde_json::Value>(doc).is_err(), "{doc:?}");
        assert_eq!(path.number(doc), Err(Skip::NotJson), "{doc:?}");
        assert_eq!(path.key_into(doc, &mut Vec::new()), Err(Skip::NotJson), "{doc:?}");
    }
    let fine = br#"{"s":"\ud83d\ude00 \u00e9","n":1e-400,"m":1.7976931348623157e308,"v":1}"#;
    assert!(serde_json::from_slice::<serde_json::Value>(fine).is_ok());
    assert_eq!(path.number(fine), Ok(1.0), "a surrogate pair, an underflow to 0, f64::MAX");
}

#[test]
fn bad_paths_are_refused() {
    for bad in ["", ".", "a.", ".a", "a..b"] {
        assert!(JsonPath::parse(bad).is_err(), "{bad:?}");
    }
    assert!(JsonPath::from_segments::<&str>(&[]).is_err());
    let dotted = JsonPath::from_segments(&["a.b"]).expect("a key with a dot");
    assert_eq!(dotted.number(br#"{"a.b":1,"a":{"b":2}}"#), Ok(1.0));
    assert_eq!(json_number(br#"{"v":1}"#, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q"), None);
}

#[test]
fn serde_json_through_the_same_walk_agrees() {
    let path = JsonPath::parse("a.v").expect("path");
    let doc = br#"{"x":"v","a":{"s":"\"v\"","v":-1.25}}"#;
    let mut de = serde_json::Deserializer::from_slice(doc);
    assert_eq!(path.number_from(&mut de).expect("valid"), Ok(-1.25));
    assert_eq!(path.number(doc), Ok(-1.25));
}

#[test]
fn escaped_dots_name_keys_that_hold_dots() {
    let path = JsonPath::parse(r"a\.b.c\\d").expect("valid path");
    assert_eq!(path.segments().collect::<Vec<_>>(), ["a.b", r"c\d"]);
    assert_eq!(path.number(br#"{"a.b":{"c\\d":4}}"#), Ok(4.0));
    // The unescaped path walks nested objects instead.
    assert_eq!(number(r#"{"a":{"b":{"c":1}}}"#, r"a\.b.c"), Err(Skip::NoField));
    for bad in [r"a\b", r"a\", r"\"] {
        assert!(JsonPath::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn values_of_every_type_for_filters() {
    let doc = br#"{"s":"x\"y","n":1.5,"b":true,"z":null,"o":{"k":[1,2]},"a":[{"v":"w"}]}"#;
    let value = |p: &str| JsonPath::parse(p).expect("valid path").value(doc);
    assert_eq!(value("s"), Ok(serde_json::json!("x\"y")));
    assert_eq!(value("n"), Ok(serde_json::json!(1.5)));
    assert_eq!(value("b"), Ok(serde_json::json!(true)));
    assert_eq!(value("z"), Ok(serde_json::Value::Null));
    assert_eq!(value("o"), Ok(serde_json::json!({"k": [1, 2]})));
    assert_eq!(value("o.k.1"), Ok(serde_json::json!(2)));
    assert_eq!(value("a.0.v"), Ok(serde_json::json!("w")));
    assert_eq!(value("missing"), Err(Skip::NoField));
    assert_eq!(value("s.deeper"), Err(Skip::NoField));
    let broken = JsonPath::parse("s").expect("valid path").value(br#"{"s":"x"} trailing"#);
    assert_eq!(broken, Err(Skip::NotJson));
}
