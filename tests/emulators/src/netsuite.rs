//! NetSuite REST record API (`/services/rest/record/v1`).
//!
//! A listing answers ids only: `{"links": [...], "count", "hasMore", "items":
//! [{"links": [...], "id"}], "offset", "totalResults"}` with `limit`/`offset`
//! and `q=lastModifiedDate AFTER "…"`; `GET .../purchaseOrder/{id}` answers
//! the full record with `custbody_*` fields and `item.items` lines. OAuth 2.0
//! client credentials at `/services/rest/auth/oauth2/v1/token`.
//!
//! `POST .../purchaseOrder` creates an order and answers `204 No Content`
//! with the new record's URL in `Location` (no body, as NetSuite does);
//! `PATCH .../purchaseOrder/{id}` updates one and answers `204`. Both honour
//! `X-NetSuite-Idempotency-Key`, which must be a UUID: a write whose key was
//! already used is not done again and gets the first one's answer. (NetSuite
//! documents the key for asynchronous requests, answering a repeat with `400
//! IDEMPOTENCY_ERROR` and a `Location`; this emulator replays the first
//! answer instead, the behaviour the engine relies on.)

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::common::{
    Emulator, MATERIALS, Shared, VENDORS, date, fixture_ms, json, link, link_base, lock, pairs,
    param, rfc3339, timestamp_in,
};

/// Token endpoint path.
pub const TOKEN_PATH: &str = "/services/rest/auth/oauth2/v1/token";
/// Record API root.
pub const RECORDS: &str = "/services/rest/record/v1";
/// The client id it accepts.
pub const CLIENT_ID: &str = "sluice-netsuite-client";
/// The client secret it accepts by default.
pub const CLIENT_SECRET: &str = "ns-client-secret";

/// Status names cycled through by fixtures.
pub const STATUSES: &[(&str, &str)] = &[
    ("A", "Pending Supervisor Approval"),
    ("B", "Pending Receipt"),
    ("D", "Partially Received"),
    ("F", "Pending Bill"),
    ("G", "Fully Billed"),
    ("H", "Closed"),
];

/// Purchase order `i` as the record API returns it.
pub fn purchase_order(i: usize, lines: usize) -> Value {
    let ms = fixture_ms(i);
    let (vendor, vendor_name) = VENDORS[i % VENDORS.len()];
    let (sid, sname) = STATUSES[i % STATUSES.len()];
    let mut total = 0.0;
    let items: Vec<Value> = (0..lines)
        .map(|l| {
            let (mat, text, unit, price) = MATERIALS[(i + l) % MATERIALS.len()];
            let qty = ((l + 1) * 2) as f64;
            let rate: f64 = price.parse().expect("fixture prices are decimals");
            let amount = (qty * rate * 100.0).round() / 100.0;
            total += amount;
            json!({
                "line": l + 1,
                "item": {"id": mat, "refName": text},
                "description": text,
                "quantity": qty,
                "units": unit,
                "rate": rate,
                "amount": amount,
                "quantityReceived": if sid == "D" && l == 0 { qty } else { 0.0 },
            })
        })
        .collect();
    json!({
        "links": [{"rel": "self", "href": format!("{RECORDS}/purchaseOrder/{}", 9000 + i)}],
        "id": format!("{}", 9000 + i),
        "tranId": format!("PO{:06}", 1000 + i),
        "entity": {"id": vendor, "refName": vendor_name},
        "status": {"id": sid, "refName": sname},
        "currency": {"id": "1", "refName": "USD"},
        "total": (total * 100.0_f64).round() / 100.0,
        "tranDate": date(ms),
        "dueDate": date(ms + 14 * 86_400_000),
        "employee": {"id": "77", "refName": "Dana Buyer"},
        "createdDate": rfc3339(ms - 3_600_000),
        "lastModifiedDate": rfc3339(ms),
        "custbody_approval_route": if i.is_multiple_of(2) { "standard" } else { "capex" },
        "custbody_plant": format!("PL{:02}", i % 4),
        "item": {"links": [], "count": lines, "hasMore": false, "items": items, "offset": 0, "totalResults": lines},
    })
}

/// Vendor `i`.
pub fn vendor(i: usize) -> Value {
    let (id, name) = VENDORS[i % VENDORS.len()];
    let ms = fixture_ms(i);
    json!({
        "links": [],
        "id": id,
        "entityId": name,
        "companyName": name,
        "isInactive": i == 5,
        "email": format!("ap@{}.example", id),
        "phone": "+1 555 0100",
        "currency": {"id": "1", "refName": "USD"},
        "terms": {"id": "2", "refName": "Net 30"},
        "taxIdNum": format!("TX-{id}"),
        "dateCreated": rfc3339(ms),
        "lastModifiedDate": rfc3339(ms),
        "custentity_supplier_tier": if i.is_multiple_of(2) { "A" } else { "B" },
    })
}

fn stamp(v: &mut Value, ms: i64) {
    v["lastModifiedDate"] = json!(rfc3339(ms));
}

/// Starts an emulator with `n` purchase orders and the fixture vendors.
pub async fn start(n: usize, lines: usize) -> Emulator {
    start_on(n, lines, 0).await
}

/// Starts on a given port (0: any).
pub async fn start_on(n: usize, lines: usize, port: u16) -> Emulator {
    let shared = Arc::new(Shared::default());
    *lock(&shared.secret) = CLIENT_SECRET.into();
    *lock(&shared.token_ttl) = 3600;
    shared.seed("purchaseOrder", n, |i| purchase_order(i, lines));
    shared.seed("vendor", VENDORS.len(), vendor);
    let router = Router::new()
        .route(TOKEN_PATH, post(token))
        .route(&format!("{RECORDS}/{{record}}"), get(list).post(create))
        .route(
            &format!("{RECORDS}/{{record}}/{{id}}"),
            get(one).patch(update),
        );
    Emulator::serve_on(router, shared, stamp, "id", port).await
}

fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    json(
        status,
        json!({
            "type": "https://www.rfc-editor.org/rfc/rfc9110.html#section-15.5.1",
            "title": "Bad Request",
            "status": status.as_u16(),
            "o:errorDetails": [{"detail": detail, "o:errorCode": code}],
        }),
    )
}

async fn token(State(shared): State<Arc<Shared>>, body: String) -> Response {
    if !shared.client_credentials_ok(&body, CLIENT_ID, None) {
        return json(
            StatusCode::BAD_REQUEST,
            json!({"error": "invalid_client", "error_description": "client authentication failed"}),
        );
    }
    let (t, ttl) = shared.issue_token();
    json(
        StatusCode::OK,
        json!({"access_token": t, "token_type": "Bearer", "expires_in": ttl}),
    )
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "INVALID_LOGIN",
        "Invalid login attempt. For more details, see the Login Audit Trail.",
    )
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(record): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    if record != "purchaseOrder" && record != "vendor" {
        return error(
            StatusCode::NOT_FOUND,
            "NONEXISTENT_ID",
            &format!("Record type {record} is not supported"),
        );
    }
    let q = pairs(raw.as_deref());
    let after = match param(&q, "q") {
        Some(f) if f.starts_with("lastModifiedDate AFTER ") => match timestamp_in(f) {
            Some(t) => Some(t),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_PARAMETER",
                    "Invalid date in query",
                );
            }
        },
        Some(f) => {
            return error(
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                &format!("Invalid query: {f}"),
            );
        }
        None => None,
    };
    let limit: usize = param(&q, "limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .clamp(1, 1000);
    let limit = shared.cap(limit);
    let offset: usize = param(&q, "offset")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let all = shared.select(&record, after);
    let items: Vec<Value> = all
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| {
            json!({
                "links": [{"rel": "self", "href": format!("{RECORDS}/{record}/{}", r["id"].as_str().unwrap_or(""))}],
                "id": r["id"],
            })
        })
        .collect();
    let more = offset + items.len() < all.len();
    let base = link_base(&shared, &headers);
    let path = format!("{RECORDS}/{record}");
    let mut links = vec![json!({"rel": "self", "href": link(&base, &path, &q, &[])})];
    if more {
        links.push(json!({"rel": "next", "href": link(&base, &path, &q, &[("offset", (offset + limit).to_string())])}));
    }
    json(
        StatusCode::OK,
        json!({
            "links": links,
            "count": items.len(),
            "hasMore": more,
            "items": items,
            "offset": offset,
            "totalResults": all.len(),
        }),
    )
}

async fn one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((record, id)): Path<(String, String)>,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    match shared
        .select(&record, None)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
    {
        Some(r) => json(StatusCode::OK, r),
        None => error(
            StatusCode::NOT_FOUND,
            "NONEXISTENT_ID",
            &format!(
                "The record instance does not exist. Provide a valid record instance ID. ({record} {id})"
            ),
        ),
    }
}

/// The header NetSuite reads an idempotency key from.
pub const IDEMPOTENCY_HEADER: &str = "x-netsuite-idempotency-key";

/// Checks a write's idempotency key: `Ok(None)` without one, `Ok(Some(key))`
/// with a UUID, an error answer otherwise.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Box<Response>> {
    let Some(v) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = v.to_str().unwrap_or_default().to_string();
    let uuid = key.len() == 36
        && key.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        });
    if uuid {
        Ok(Some(key))
    } else {
        Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "INVALID_HEADER",
            &format!("Invalid X-NetSuite-Idempotency-Key header value {key}: a UUID is expected."),
        )))
    }
}

fn no_content(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header("location", location)
        .body(axum::body::Body::empty())
        .expect("a valid response")
}

/// `POST .../purchaseOrder`: a new order from `entity`, `tranDate`,
/// `dueDate`, `memo`, `custbody_*` and `item.items` (`item.id`, `quantity`,
/// `rate`, `description`); `204` with its URL in `Location`.
async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(record): Path<String>,
    body: String,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    if record != "purchaseOrder" {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_RCRD_TYPE",
            &format!("Creating {record} records is not supported here"),
        );
    }
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return *e,
    };
    if let Some(k) = &key
        && let Some(location) = lock(&shared.idempotency).get(k)
    {
        return no_content(location);
    }
    let Ok(input) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_CONTENT",
            "The request body is not JSON.",
        );
    };
    let vendor_id = input["entity"]["id"].as_str().unwrap_or_default();
    let Some((_, vendor_name)) = VENDORS.iter().find(|(id, _)| *id == vendor_id) else {
        return error(
            StatusCode::BAD_REQUEST,
            "USER_ERROR",
            &format!(
                "Error while accessing a resource. Invalid value {vendor_id} for field entity."
            ),
        );
    };
    let now = crate::common::now_ms();
    let seq = shared.next_seq();
    let id = format!("{}", 20_000 + seq);
    let mut total = 0.0;
    let items: Vec<Value> = input["item"]["items"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(n, l)| {
            let qty = l["quantity"].as_f64().unwrap_or(0.0);
            let rate = l["rate"].as_f64().unwrap_or(0.0);
            let amount = (qty * rate * 100.0).round() / 100.0;
            total += amount;
            json!({
                "line": n + 1,
                "item": {"id": l["item"]["id"], "refName": l["description"]},
                "description": l["description"],
                "quantity": qty,
                "units": l["units"].as_str().unwrap_or("EA"),
                "rate": rate,
                "amount": amount,
                "quantityReceived": 0.0,
            })
        })
        .collect();
    let lines = items.len();
    let mut po = json!({
        "links": [{"rel": "self", "href": format!("{RECORDS}/purchaseOrder/{id}")}],
        "id": id,
        "tranId": format!("PO{:06}", 50_000 + seq),
        "entity": {"id": vendor_id, "refName": vendor_name},
        "status": {"id": "A", "refName": "Pending Supervisor Approval"},
        "currency": {"id": "1", "refName": "USD"},
        "total": (total * 100.0_f64).round() / 100.0,
        "tranDate": input["tranDate"].as_str().map_or_else(|| date(now), str::to_string),
        "dueDate": input["dueDate"],
        "employee": {"id": "77", "refName": "Dana Buyer"},
        "createdDate": rfc3339(now),
        "lastModifiedDate": rfc3339(now),
        "item": {"links": [], "count": lines, "hasMore": false, "items": items, "offset": 0, "totalResults": lines},
    });
    if let (Some(obj), Some(inp)) = (po.as_object_mut(), input.as_object()) {
        for (k, v) in inp {
            if k.starts_with("custbody_") || k == "memo" {
                obj.insert(k.clone(), v.clone());
            }
        }
    }
    shared.push("purchaseOrder", now, po);
    let location = format!(
        "{}{RECORDS}/purchaseOrder/{id}",
        link_base(&shared, &headers)
    );
    if let Some(k) = key {
        lock(&shared.idempotency).insert(k, location.clone());
    }
    no_content(&location)
}

/// `PATCH .../purchaseOrder/{id}`: sets `memo`, `dueDate` and `custbody_*`
/// fields; `204`.
async fn update(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((record, id)): Path<(String, String)>,
    body: String,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    let key = match idempotency_key(&headers) {
        Ok(k) => k,
        Err(e) => return *e,
    };
    let location = format!("{}{RECORDS}/{record}/{id}", link_base(&shared, &headers));
    if let Some(k) = &key
        && lock(&shared.idempotency).contains_key(k)
    {
        return no_content(&location);
    }
    let Ok(Value::Object(patch)) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_CONTENT",
            "The request body is not a JSON object.",
        );
    };
    let now = crate::common::now_ms();
    let mut data = lock(&shared.data);
    let Some(r) = data
        .get_mut(&record)
        .and_then(|rs| rs.iter_mut().find(|r| r.value()["id"] == id.as_str()))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "NONEXISTENT_ID",
            &format!(
                "The record instance does not exist. Provide a valid record instance ID. ({record} {id})"
            ),
        );
    };
    r.change(now, |v| {
        for (k, val) in &patch {
            if k.starts_with("custbody_") || k == "memo" || k == "dueDate" {
                v[k] = val.clone();
            }
        }
        stamp(v, now);
    });
    drop(data);
    if let Some(k) = key {
        lock(&shared.idempotency).insert(k, location.clone());
    }
    no_content(&location)
}
