//! A JSON value that keeps object keys in document order and numbers as
//! written, and renders itself the way Falco's k8saudit plugin does.
//!
//! Falco extracts fields with fastjson and prints non-string values with
//! `MarshalTo`, which keeps the document's key order. `serde_json::Value`
//! sorts keys (the workspace does not enable `preserve_order`), so output
//! fields such as `ka.req.binding.subjects` or `ka.req.configmap.obj` would
//! differ from Falco's, and `contains` on `ka.req.configmap.obj` would search
//! a different string.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    /// The number's text.
    Num(String),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::Num(v.to_string()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::Num(v.to_string()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        Ok(Json::Num(v.to_string()))
    }
    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            entries.push((k, v));
        }
        Ok(Json::Obj(entries))
    }
}

impl Json {
    pub fn parse(text: &str) -> Option<Json> {
        serde_json::from_str(text).ok()
    }

    /// fastjson's `Get` for one key: the first entry of an object with that
    /// key, or an array element when the key is a decimal index.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Obj(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            Json::Arr(items) => key.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Json> {
        match self {
            Json::Obj(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_path(&self, keys: &[&str]) -> Option<&Json> {
        keys.iter().try_fold(self, |v, k| v.get(k))
    }

    /// RFC 6901 JSON pointer (`~1` is `/`, `~0` is `~`).
    pub fn pointer(&self, pointer: &str) -> Option<&Json> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/').try_fold(self, |v, token| {
            let token = token.replace("~1", "/").replace("~0", "~");
            match v {
                Json::Obj(entries) => entries.iter().find(|(k, _)| *k == token).map(|(_, v)| v),
                Json::Arr(items) => {
                    // RFC 6901 forbids leading zeros and signs in indices.
                    if token.is_empty()
                        || (token.len() > 1 && token.starts_with('0'))
                        || !token.bytes().all(|b| b.is_ascii_digit())
                    {
                        return None;
                    }
                    token.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            }
        })
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Arr(items) => Some(items),
            _ => None,
        }
    }

    /// How the plugin turns any value into a field string
    /// (`jsonValueAsString`): strings as they are, anything else as compact
    /// JSON.
    pub fn to_field_string(&self) -> String {
        match self {
            Json::Str(s) => s.clone(),
            other => other.to_compact(),
        }
    }

    /// Compact JSON as fastjson's `MarshalTo` writes it.
    pub fn to_compact(&self) -> String {
        let mut out = String::new();
        self.write_compact(&mut out);
        out
    }

    fn write_compact(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => out.push_str(n),
            Json::Str(s) => write_go_string(s, out),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_compact(out);
                }
                out.push(']');
            }
            Json::Obj(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_go_string(k, out);
                    out.push(':');
                    v.write_compact(out);
                }
                out.push('}');
            }
        }
    }
}

/// fastjson's `escapeString`: strings without quotes, backslashes or control
/// characters are written as they are; the others go through Go's
/// `strconv.AppendQuote`, whose escapes are reproduced here for ASCII.
fn write_go_string(s: &str, out: &mut String) {
    let special = s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
    out.push('"');
    if !special {
        out.push_str(s);
    } else {
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\u{7}' => out.push_str("\\a"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{b}' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c => out.push(c),
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_number_text() {
        let v =
            Json::parse(r#"{ "b": 1, "a": [true, null, 80], "c": {"z": "x", "y": 1.5} }"#).unwrap();
        assert_eq!(
            v.to_compact(),
            r#"{"b":1,"a":[true,null,80],"c":{"z":"x","y":1.5}}"#
        );
    }

    #[test]
    fn escapes_like_go() {
        let v = Json::parse(r#"{"k":"a\nb \"q\" \\ \u0001 é"}"#).unwrap();
        assert_eq!(v.to_compact(), "{\"k\":\"a\\nb \\\"q\\\" \\\\ \\x01 é\"}");
        assert_eq!(Json::Str("plain".into()).to_field_string(), "plain");
    }

    #[test]
    fn pointer_follows_rfc6901() {
        let v = Json::parse(
            r#"{"annotations":{"authorization.k8s.io/decision":"allow","a~b":1},"l":[10,20]}"#,
        )
        .unwrap();
        assert_eq!(
            v.pointer("/annotations/authorization.k8s.io~1decision"),
            Some(&Json::Str("allow".into()))
        );
        assert_eq!(v.pointer("/annotations/a~0b"), Some(&Json::Num("1".into())));
        assert_eq!(
            v.pointer("/annotations/authorization.k8s.io/decision"),
            None
        );
        assert_eq!(v.pointer("/l/1"), Some(&Json::Num("20".into())));
        assert_eq!(v.pointer("/l/01"), None);
        assert_eq!(v.pointer(""), Some(&v));
    }

    #[test]
    fn get_indexes_arrays_like_fastjson() {
        let v = Json::parse(r#"{"a":[{"b":1}]}"#).unwrap();
        assert_eq!(v.get_path(&["a", "0", "b"]), Some(&Json::Num("1".into())));
        assert_eq!(v.get_path(&["a", "1"]), None);
    }
}
