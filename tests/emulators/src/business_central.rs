//! Dynamics 365 Business Central API v2.0 (OData v4).
//!
//! `GET /v2.0/{tenant}/{env}/api/v2.0/companies({id})/purchaseOrders?$filter=lastModifiedDateTime gt …&$expand=purchaseOrderLines`
//! answers `{"@odata.context", "value": [...], "@odata.nextLink"}`: pages of
//! the service's size or of `Prefer: odata.maxpagesize=N`; `$top` caps the
//! whole result. A space in the query must come as `%20` (`+` is a plus
//! sign, and a filter with one is refused as by the real service). The same
//! for `vendors`. `POST purchaseOrders` (deep insert of lines) and
//! `PATCH purchaseOrders({id})` with `If-Match`. OAuth 2.0 client credentials
//! at `/{tenant}/oauth2/v2.0/token` (Entra ID).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::common::{
    Emulator, MATERIALS, Shared, VENDORS, date, fixture_ms, json, link, link_base, lock, now_ms,
    pairs, param, rfc3339, timestamp_in,
};

/// Tenant id fixtures use.
pub const TENANT: &str = "contoso-tenant";
/// Environment.
pub const ENVIRONMENT: &str = "production";
/// Company id.
pub const COMPANY: &str = "5d115c9c-44e3-ea11-bb43-000d3a2feca1";
/// The client id it accepts.
pub const CLIENT_ID: &str = "sluice-bc-app";
/// The client secret it accepts by default.
pub const CLIENT_SECRET: &str = "bc-client-secret";

/// The API root of the fixture company.
pub fn api_root() -> String {
    format!("/v2.0/{TENANT}/{ENVIRONMENT}/api/v2.0/companies({COMPANY})")
}

fn guid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{:012x}", i)
}

/// Vendor id of fixture vendor `i`.
pub fn vendor_id(i: usize) -> String {
    guid(0xbeef, i)
}

/// Purchase-order statuses cycled through.
pub const STATUSES: &[&str] = &["Draft", "In Review", "Open", "Released"];

/// Purchase order `i`.
pub fn purchase_order(i: usize, lines: usize) -> Value {
    let ms = fixture_ms(i);
    let v = i % VENDORS.len();
    let (vnum, vname) = VENDORS[v];
    let mut total = 0.0;
    let id = guid(0xa0, i);
    let lines: Vec<Value> = (0..lines)
        .map(|l| {
            let (mat, text, unit, price) = MATERIALS[(i + l) % MATERIALS.len()];
            let qty = (l + 3) as f64;
            let cost: f64 = price.parse().expect("fixture prices are decimals");
            let amount = (qty * cost * 100.0).round() / 100.0;
            total += amount;
            json!({
                "@odata.etag": "W/\"JzE5OzE=\"",
                "id": guid(0xb0, i * 100 + l),
                "documentId": id,
                "sequence": (l + 1) * 10000,
                "itemId": mat,
                "lineType": "Item",
                "lineObjectNumber": mat,
                "description": text,
                "unitOfMeasureCode": unit,
                "quantity": qty,
                "directUnitCost": cost,
                "amountExcludingTax": amount,
                "receivedQuantity": 0,
            })
        })
        .collect();
    json!({
        "@odata.etag": "W/\"JzE5OzE3MDAwMDAwMDAwMDAwMDAwOzAwOyc=\"",
        "id": id,
        "number": format!("106{:03}", i),
        "orderDate": date(ms),
        "postingDate": date(ms),
        "vendorId": vendor_id(v),
        "vendorNumber": vnum,
        "vendorName": vname,
        "currencyCode": if i.is_multiple_of(2) { "EUR" } else { "USD" },
        "requestedReceiptDate": date(ms + 7 * 86_400_000),
        "purchaser": "AH",
        "status": STATUSES[i % STATUSES.len()],
        "totalAmountExcludingTax": (total * 100.0_f64).round() / 100.0,
        "totalTaxAmount": ((total * 119.0_f64).round() - (total * 100.0_f64).round()) / 100.0,
        "totalAmountIncludingTax": (total * 119.0_f64).round() / 100.0,
        "lastModifiedDateTime": rfc3339(ms),
        "purchaseOrderLines": lines,
    })
}

/// Vendor `i`.
pub fn vendor(i: usize) -> Value {
    let (num, name) = VENDORS[i % VENDORS.len()];
    json!({
        "@odata.etag": "W/\"JzE5OzE=\"",
        "id": vendor_id(i),
        "number": num,
        "displayName": name,
        "email": format!("orders@{num}.example"),
        "phoneNumber": "+49 30 1234567",
        "taxRegistrationNumber": format!("DE{num}"),
        "currencyCode": "EUR",
        "country": if i.is_multiple_of(2) { "DE" } else { "SE" },
        "blocked": if i == 4 { "Payment" } else { " " },
        "lastModifiedDateTime": rfc3339(fixture_ms(i)),
    })
}

fn stamp(v: &mut Value, ms: i64) {
    v["lastModifiedDateTime"] = json!(rfc3339(ms));
}

/// Starts an emulator with `n` purchase orders.
pub async fn start(n: usize, lines: usize) -> Emulator {
    start_on(n, lines, 0).await
}

/// Starts on a given port (0: any).
pub async fn start_on(n: usize, lines: usize, port: u16) -> Emulator {
    let shared = Arc::new(Shared::default());
    *lock(&shared.secret) = CLIENT_SECRET.into();
    *lock(&shared.token_ttl) = 3599;
    shared.seed("purchaseOrders", n, |i| purchase_order(i, lines));
    shared.seed("vendors", VENDORS.len(), vendor);
    let root = api_root();
    let router = Router::new()
        .route(&format!("/{TENANT}/oauth2/v2.0/token"), post(token))
        .route(
            &format!("{root}/{{set}}"),
            get(list).post(create).patch(update),
        );
    Emulator::serve_on(router, shared, stamp, "id", port).await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(status, json!({"error": {"code": code, "message": message}}))
}

async fn token(State(shared): State<Arc<Shared>>, body: String) -> Response {
    if !shared.client_credentials_ok(&body, CLIENT_ID, Some("/.default")) {
        return json(
            StatusCode::UNAUTHORIZED,
            json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
        );
    }
    let (t, ttl) = shared.issue_token();
    json(
        StatusCode::OK,
        json!({"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": t}),
    )
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "Authentication_InvalidCredentials",
        "The server has rejected the client credentials.",
    )
}

/// `purchaseOrders` or `purchaseOrders(id)`.
fn parse_set(set: &str) -> (&str, Option<&str>) {
    match set.split_once('(') {
        Some((name, rest)) => (name, rest.strip_suffix(')')),
        None => (set, None),
    }
}

fn expand(mut v: Value, q: &[(String, String)]) -> Value {
    if !param(q, "$expand").is_some_and(|e| e.contains("purchaseOrderLines"))
        && let Some(o) = v.as_object_mut()
    {
        o.remove("purchaseOrderLines");
    }
    v
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(set): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    let q = pairs(raw.as_deref());
    let (name, key) = parse_set(&set);
    if name != "purchaseOrders" && name != "vendors" {
        return error(
            StatusCode::NOT_FOUND,
            "BadRequest_NotFound",
            &format!("The endpoint '{name}' is not found."),
        );
    }
    if let Some(id) = key {
        return match shared
            .select(name, None)
            .into_iter()
            .find(|r| r["id"] == id)
        {
            Some(r) => json(StatusCode::OK, expand(r, &q)),
            None => error(
                StatusCode::NOT_FOUND,
                "Internal_RecordNotFound",
                &format!("The {name} does not exist. Identification fields and values: Id='{id}'"),
            ),
        };
    }
    let after = match param(&q, "$filter") {
        Some(f) if f.starts_with("lastModifiedDateTime gt ") => match timestamp_in(f) {
            Some(t) => Some(t),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "Invalid datetime in $filter",
                );
            }
        },
        Some(f) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("Unsupported $filter: {f}"),
            );
        }
        None => None,
    };
    // Server-driven paging: the page size is the service's (20,000), or
    // smaller when the client prefers `odata.maxpagesize`; `$top` caps the
    // whole result (OData v4.01 Protocol §11.2.6.3), never a page.
    let preferred = max_page_size(&headers);
    let page_size = shared.cap(preferred.unwrap_or(SERVER_PAGE).min(SERVER_PAGE));
    let top: usize = param(&q, "$top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(usize::MAX);
    let skip: usize = param(&q, "$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let mut all = shared.select(name, after);
    all.truncate(top);
    let page: Vec<Value> = all
        .iter()
        .skip(skip)
        .take(page_size)
        .cloned()
        .map(|v| expand(v, &q))
        .collect();
    let relative = *lock(&shared.relative_next_link);
    let mut body = json!({
        "@odata.context": if relative {
            // Relative to the request URL: the service root's $metadata.
            format!("../$metadata#{name}")
        } else {
            format!("https://api.businesscentral.dynamics.com{}/$metadata#{name}", api_root())
        },
    });
    if !*lock(&shared.no_records_key) {
        body["value"] = Value::Array(page.clone());
    }
    if skip + page.len() < all.len() || *lock(&shared.endless) {
        // A relative next link is relative to the context URL (OData JSON
        // Format v4.01 §4.6), i.e. to the service root here.
        let (base, path) = if relative {
            (String::new(), format!("companies({COMPANY})/{name}"))
        } else {
            (
                link_base(&shared, &headers),
                format!("{}/{name}", api_root()),
            )
        };
        body["@odata.nextLink"] = json!(link(
            &base,
            &path,
            &q,
            &[("$skiptoken", (skip + page_size).to_string())],
        ));
    }
    let mut r = json(StatusCode::OK, body);
    if let Some(n) = preferred {
        r.headers_mut().insert(
            "preference-applied",
            format!("odata.maxpagesize={n}")
                .parse()
                .expect("a valid header value"),
        );
    }
    r
}

/// The service's own page size.
pub const SERVER_PAGE: usize = 20_000;

/// `odata.maxpagesize` of a `Prefer` header.
fn max_page_size(headers: &HeaderMap) -> Option<usize> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            (k.trim().eq_ignore_ascii_case("odata.maxpagesize"))
                .then(|| v.trim().parse().ok())
                .flatten()
        })
}

async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(set): Path<String>,
    RawQuery(raw): RawQuery,
    body: String,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    if set != "purchaseOrders" {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadRequest_MethodNotAllowed",
            "'POST' requests are not supported",
        );
    }
    let q = pairs(raw.as_deref());
    let Ok(input) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON body");
    };
    let Some(v) = (0..VENDORS.len()).find(|i| input["vendorId"] == vendor_id(*i)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "Internal_RecordNotFound",
            &format!(
                "The Vendor does not exist. Identification fields and values: Id='{}'",
                input["vendorId"].as_str().unwrap_or("")
            ),
        );
    };
    let seq = shared.next_seq() as usize;
    let now = now_ms();
    let id = guid(0xc0, seq);
    let mut total = 0.0;
    let lines: Vec<Value> = input["purchaseOrderLines"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .map(|(l, line)| {
            let qty = line["quantity"].as_f64().unwrap_or(0.0);
            let cost = line["directUnitCost"].as_f64().unwrap_or(0.0);
            total += qty * cost;
            json!({
                "id": guid(0xd0, seq * 100 + l),
                "documentId": id,
                "sequence": (l + 1) * 10000,
                "itemId": line["itemId"],
                "lineType": line["lineType"].as_str().unwrap_or("Item"),
                "description": line["description"],
                "unitOfMeasureCode": line["unitOfMeasureCode"],
                "quantity": qty,
                "directUnitCost": cost,
                "amountExcludingTax": qty * cost,
                "receivedQuantity": 0,
            })
        })
        .collect();
    let (vnum, vname) = VENDORS[v];
    let po = json!({
        "@odata.etag": "W/\"JzE5OzE=\"",
        "id": id,
        "number": format!("107{seq:03}"),
        "orderDate": input["orderDate"].as_str().map(str::to_string).unwrap_or_else(|| date(now)),
        "postingDate": date(now),
        "vendorId": vendor_id(v),
        "vendorNumber": vnum,
        "vendorName": vname,
        "currencyCode": input["currencyCode"].as_str().unwrap_or("EUR"),
        "requestedReceiptDate": input["requestedReceiptDate"],
        "purchaser": input["purchaser"],
        "status": "Draft",
        "totalAmountExcludingTax": total,
        "totalTaxAmount": 0,
        "totalAmountIncludingTax": total,
        "lastModifiedDateTime": rfc3339(now),
        "purchaseOrderLines": lines,
    });
    shared.push("purchaseOrders", now, po.clone());
    json(StatusCode::CREATED, expand(po, &q))
}

async fn update(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(set): Path<String>,
    RawQuery(raw): RawQuery,
    body: String,
) -> Response {
    if !shared.bearer_ok(&headers) {
        return unauthorized();
    }
    let q = pairs(raw.as_deref());
    let (name, Some(id)) = parse_set(&set) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "PATCH needs a key");
    };
    if headers.get("if-match").is_none() {
        return error(
            StatusCode::PRECONDITION_FAILED,
            "Internal_EntityWithSameKeyExists",
            "Could not find a property named 'If-Match' in the request headers.",
        );
    }
    let Ok(Value::Object(patch)) = serde_json::from_str::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "BadRequest", "Invalid JSON body");
    };
    for key in patch.keys() {
        if matches!(key.as_str(), "id" | "number" | "lastModifiedDateTime") {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest_InvalidToken",
                &format!("The property '{key}' is read-only"),
            );
        }
    }
    let now = now_ms();
    let mut data = lock(&shared.data);
    let Some(rec) = data
        .get_mut(name)
        .and_then(|rs| rs.iter_mut().find(|r| r.value()["id"] == id))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "Internal_RecordNotFound",
            &format!("The {name} does not exist. Identification fields and values: Id='{id}'"),
        );
    };
    rec.change(now, |v| {
        if let Some(o) = v.as_object_mut() {
            o.extend(patch);
        }
        stamp(v, now);
    });
    json(StatusCode::OK, expand(rec.value().clone(), &q))
}
