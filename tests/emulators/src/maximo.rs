//! IBM Maximo Manage REST API (OSLC object structures `mxapiwo`, `mxapiasset`).
//!
//! `GET /maximo/api/os/mxapiwo?lean=1&oslc.select=*&oslc.pageSize=&pageno=&oslc.where=changedate>"…"`
//! answers `{"member": [...], "responseInfo": {"nextPage": {"href"}, "pagenum", "totalCount"}}`.
//! `POST /maximo/api/os/mxapiwo` creates (returns the record with `properties: *`);
//! `POST .../mxapiwo/{id}` with `x-method-override: PATCH` updates. `apikey` header.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};

use crate::common::{
    Emulator, Shared, date, fixture_ms, json, link, link_base, lock, now_ms, pairs, param,
    timestamp_in,
};

/// The API key it accepts by default.
pub const API_KEY: &str = "mx-api-key-123";
/// Object structure root.
pub const OS: &str = "/maximo/api/os";

fn maximo_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .expect("in range")
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// Work-order statuses cycled through.
pub const STATUSES: &[&str] = &[
    "WAPPR", "APPR", "WSCH", "WMATL", "INPRG", "COMP", "CLOSE", "CAN",
];
/// Work types cycled through.
pub const WORK_TYPES: &[&str] = &["CM", "PM", "EM", "CAL"];

/// Work order `i`.
pub fn work_order(i: usize) -> Value {
    let ms = fixture_ms(i);
    let status = STATUSES[i % STATUSES.len()];
    let mut w = json!({
        "href": format!("http://localhost/maximo/api/os/mxapiwo/{}", 1000 + i),
        "workorderid": 1000 + i,
        "wonum": format!("WO{:05}", 1000 + i),
        "description": format!("Inspect pump P-{:03} vibration", i % 40),
        "status": status,
        "wopriority": (i % 5) + 1,
        "worktype": WORK_TYPES[i % WORK_TYPES.len()],
        "assetnum": format!("P-{:03}", i % 40),
        "siteid": "BEDFORD",
        "orgid": "EAGLENA",
        "lead": if i.is_multiple_of(3) { Value::Null } else { json!("WILSON") },
        "targcompdate": maximo_time(ms + 5 * 86_400_000),
        "estdur": 1.5 + (i % 4) as f64,
        "reportdate": maximo_time(ms - 86_400_000),
        "changedate": maximo_time(ms),
    });
    if status == "COMP" || status == "CLOSE" {
        w["actfinish"] = json!(maximo_time(ms));
    }
    w
}

/// Asset `i`.
pub fn asset(i: usize) -> Value {
    let ms = fixture_ms(i);
    let status = ["OPERATING", "NOT READY", "BROKEN", "DECOMMISSIONED"][i % 4];
    json!({
        "assetid": 500 + i,
        "assetnum": format!("P-{:03}", i),
        "description": format!("Centrifugal pump P-{i:03}"),
        "status": status,
        "assettype": "PUMP",
        "location": format!("BR{:03}", 400 + i % 5),
        "manufacturer": "GRUNDFOS",
        "serialnum": format!("GF-{:06}", 10_000 + i),
        "installdate": maximo_time(ms - 400 * 86_400_000),
        "priority": (i % 4) + 1,
        "siteid": "BEDFORD",
        "changedate": maximo_time(ms),
    })
}

fn stamp(v: &mut Value, ms: i64) {
    v["changedate"] = json!(maximo_time(ms));
}

/// Starts an emulator with `n` work orders and 40 assets.
pub async fn start(n: usize) -> Emulator {
    start_on(n, 0).await
}

/// Starts on a given port (0: any).
pub async fn start_on(n: usize, port: u16) -> Emulator {
    let shared = Arc::new(Shared::default());
    *lock(&shared.secret) = API_KEY.into();
    shared.seed("mxapiwo", n, work_order);
    shared.seed("mxapiasset", 40, asset);
    let router = Router::new()
        .route(&format!("{OS}/{{os}}"), get(list).post(create))
        .route(&format!("{OS}/{{os}}/{{id}}"), get(one).post(update));
    Emulator::serve_on(router, shared, stamp, "workorderid", port).await
}

fn error(status: StatusCode, reason: &str, message: &str) -> Response {
    json(
        status,
        json!({"Error": {"extendedError": {"moreInfo": {"href": "http://localhost/maximo/api/error/messages/"}}, "reasonCode": reason, "message": message, "statusCode": status.as_u16().to_string()}}),
    )
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    headers
        .get("apikey")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == lock(&shared.secret).as_str())
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "BMXAA0021E",
        "BMXAA0021E - User name and password combination are not valid. Try again.",
    )
}

fn key_of(os: &str) -> &'static str {
    if os == "mxapiasset" {
        "assetid"
    } else {
        "workorderid"
    }
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(os): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    if os != "mxapiwo" && os != "mxapiasset" {
        return error(
            StatusCode::NOT_FOUND,
            "BMXAA8727E",
            &format!("BMXAA8727E - The OSLC resource {os} was not found."),
        );
    }
    let q = pairs(raw.as_deref());
    let after = match param(&q, "oslc.where") {
        Some(w) if w.starts_with("changedate>") => match timestamp_in(w) {
            Some(t) => Some(t),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BMXAA9553E",
                    "BMXAA9553E - Invalid date in oslc.where",
                );
            }
        },
        Some(w) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BMXAA9553E",
                &format!("BMXAA9553E - Unsupported oslc.where: {w}"),
            );
        }
        None => None,
    };
    let size: usize = param(&q, "oslc.pageSize")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .max(1);
    let size = shared.cap(size);
    let page: usize = param(&q, "pageno")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let all = shared.select(&os, after);
    let members: Vec<Value> = all
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .cloned()
        .collect();
    let mut info =
        json!({"pagenum": page, "totalCount": all.len(), "totalPages": all.len().div_ceil(size)});
    let base = link_base(&shared, &headers);
    let path = format!("{OS}/{os}");
    info["href"] = json!(link(&base, &path, &q, &[]));
    if page * size < all.len() || *lock(&shared.endless) {
        info["nextPage"] =
            json!({"href": link(&base, &path, &q, &[("pageno", (page + 1).to_string())])});
    }
    let mut body = json!({"responseInfo": info});
    if !*lock(&shared.no_records_key) {
        body["member"] = Value::Array(members);
    }
    json(StatusCode::OK, body)
}

async fn one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((os, id)): Path<(String, String)>,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let key = key_of(&os);
    match shared
        .select(&os, None)
        .into_iter()
        .find(|r| crate::common::id_text(&r[key]) == id)
    {
        Some(r) => json(StatusCode::OK, r),
        None => error(
            StatusCode::NOT_FOUND,
            "BMXAA8727E",
            &format!("BMXAA8727E - The OSLC resource {os}/{id} was not found."),
        ),
    }
}

async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(os): Path<String>,
    body: String,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    if os != "mxapiwo" {
        return error(
            StatusCode::BAD_REQUEST,
            "BMXAA9549E",
            "BMXAA9549E - Create is not supported here",
        );
    }
    let Ok(input) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BMXAA9549E",
            "BMXAA9549E - The JSON is not valid",
        );
    };
    if input["siteid"].as_str().is_none_or(str::is_empty) {
        return error(
            StatusCode::BAD_REQUEST,
            "BMXAA4195E",
            "BMXAA4195E - A value is required for the Site field on the WORKORDER object.",
        );
    }
    let seq = shared.next_seq() as i64;
    let now = now_ms();
    let mut w = input.clone();
    w["workorderid"] = json!(5000 + seq);
    w["wonum"] = json!(format!("WO{}", 5000 + seq));
    w["status"] = json!("WAPPR");
    w["reportdate"] = json!(maximo_time(now));
    w["changedate"] = json!(maximo_time(now));
    w["href"] = json!(format!(
        "http://localhost/maximo/api/os/mxapiwo/{}",
        5000 + seq
    ));
    shared.push(&os, now, w.clone());
    if headers.get("properties").is_some() {
        json(StatusCode::CREATED, w)
    } else {
        json(StatusCode::CREATED, json!({}))
    }
}

async fn update(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((os, id)): Path<(String, String)>,
    body: String,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    if headers
        .get("x-method-override")
        .and_then(|v| v.to_str().ok())
        != Some("PATCH")
    {
        return error(
            StatusCode::BAD_REQUEST,
            "BMXAA9550E",
            "BMXAA9550E - POST to a resource needs x-method-override: PATCH",
        );
    }
    let Ok(Value::Object(patch)) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "BMXAA9549E",
            "BMXAA9549E - The JSON is not valid",
        );
    };
    let key = key_of(&os);
    let now = now_ms();
    let mut data = lock(&shared.data);
    let Some(rec) = data.get_mut(&os).and_then(|rs| {
        rs.iter_mut()
            .find(|r| crate::common::id_text(&r.value()[key]) == id)
    }) else {
        return error(
            StatusCode::NOT_FOUND,
            "BMXAA8727E",
            &format!("BMXAA8727E - The OSLC resource {os}/{id} was not found."),
        );
    };
    rec.change(now, |v| {
        if let Some(o) = v.as_object_mut() {
            o.extend(patch);
        }
        stamp(v, now);
    });
    if headers.get("properties").is_some() {
        json(StatusCode::OK, rec.value().clone())
    } else {
        json(StatusCode::NO_CONTENT, Value::Null)
    }
}

/// `YYYY-MM-DD` of fixture time `i` (for tests).
pub fn fixture_date(i: usize) -> String {
    date(fixture_ms(i))
}
