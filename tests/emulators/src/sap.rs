//! SAP S/4HANA `API_PURCHASEORDER_PROCESS_SRV` (OData v2).
//!
//! `GET {SERVICE}/A_PurchaseOrder?$format=json&$skiptoken=&$filter=&$expand=to_PurchaseOrderItem`
//! answers `{"d": {"results": [...], "__next": "..."}}` with `Edm.Decimal`
//! as strings and dates as `/Date(ms)/`; `GET {SERVICE}/A_PurchaseOrder('ID')`
//! answers `{"d": {...}}`. Basic auth (`SAP_USER` / the emulator's secret).
//! Writes need a CSRF token: `GET {SERVICE}/` with `x-csrf-token: Fetch`
//! returns one plus a session cookie, both of the client the fetch logged on
//! to (`sap-client`, else [`DEFAULT_CLIENT`]); a `POST` without both for its
//! own client gets `403` with `x-csrf-token: Required`. The service pages by
//! itself (`__next`); `$top` caps the whole result.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::common::{
    Emulator, MATERIALS, Shared, VENDORS, fixture_ms, json, json_text, link, link_base, lock,
    now_ms, pairs, param, timestamp_in,
};

/// The service root path.
pub const SERVICE: &str = "/sap/opu/odata/sap/API_PURCHASEORDER_PROCESS_SRV";
/// The user the emulator accepts.
pub const USER: &str = "SLUICE_INTEGRATION";
/// The password it accepts by default.
pub const PASSWORD: &str = "sap-secret-pw";
/// Collection name of purchase orders.
pub const POS: &str = "purchase_orders";
/// The service's own page size (server-driven paging).
pub const MAX_TOP: usize = 500;

fn sap_date(ms: i64) -> String {
    format!("/Date({ms})/")
}

fn sap_offset(ms: i64) -> String {
    format!("/Date({ms}+0000)/")
}

/// Status codes cycled through by fixtures.
pub const STATUSES: &[&str] = &["01", "02", "03", "05", "05", "08"];

/// Purchase order `i` with `lines` items, as SAP returns it.
pub fn purchase_order(i: usize, lines: usize) -> Value {
    let ms = fixture_ms(i);
    let (vendor, _) = VENDORS[i % VENDORS.len()];
    let items: Vec<Value> = (0..lines)
        .map(|l| {
            let (mat, text, unit, price) = MATERIALS[(i + l) % MATERIALS.len()];
            json!({
                "PurchaseOrder": format!("{}", 4_500_000_000u64 + i as u64),
                "PurchaseOrderItem": format!("{}", (l + 1) * 10),
                "Material": mat,
                "PurchaseOrderItemText": text,
                "Plant": "1010",
                "OrderQuantity": format!("{}", (l + 1) * 5),
                "PurchaseOrderQuantityUnit": unit,
                "NetPriceAmount": price,
                "NetPriceQuantity": "1",
                "DocumentCurrency": if i.is_multiple_of(3) { "USD" } else { "EUR" },
                "IsCompletelyDelivered": false,
            })
        })
        .collect();
    json!({
        "__metadata": {"type": "API_PURCHASEORDER_PROCESS_SRV.A_PurchaseOrderType"},
        "PurchaseOrder": format!("{}", 4_500_000_000u64 + i as u64),
        "CompanyCode": "1010",
        "PurchaseOrderType": "NB",
        "PurchasingProcessingStatus": STATUSES[i % STATUSES.len()],
        "CreatedByUser": if i.is_multiple_of(2) { "JSMITH" } else { "MKOVAC" },
        "CreationDate": sap_date(ms - ms % 86_400_000),
        "LastChangeDateTime": sap_offset(ms),
        "Supplier": vendor,
        "PurchasingOrganization": "1010",
        "PurchasingGroup": "001",
        "DocumentCurrency": if i.is_multiple_of(3) { "USD" } else { "EUR" },
        "PurchaseOrderDate": sap_date(ms - ms % 86_400_000),
        "YY1_ProjectCode_PDH": format!("PRJ-{:03}", i % 7),
        "YY1_Urgent_PDH": i.is_multiple_of(5),
        "to_PurchaseOrderItem": {"results": items},
    })
}

fn stamp(v: &mut Value, ms: i64) {
    v["LastChangeDateTime"] = json!(sap_offset(ms));
}

/// Starts an emulator with `n` purchase orders of `lines` items.
pub async fn start(n: usize, lines: usize) -> Emulator {
    start_on(n, lines, 0).await
}

/// Starts on a given port.
pub async fn start_on(n: usize, lines: usize, port: u16) -> Emulator {
    let shared = Arc::new(Shared::default());
    *lock(&shared.secret) = PASSWORD.into();
    shared.seed(POS, n, |i| purchase_order(i, lines));
    let router = Router::new()
        .route(&format!("{SERVICE}/"), get(root))
        .route(
            &format!("{SERVICE}/A_PurchaseOrder"),
            get(list).post(create),
        )
        .route(&format!("{SERVICE}/{{key}}"), get(one));
    Emulator::serve_on(router, shared, stamp, "PurchaseOrder", port).await
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    json(
        status,
        json!({"error": {"code": code, "message": {"lang": "en", "value": message}}}),
    )
}

/// The system's default client, used when a request names none.
pub const DEFAULT_CLIENT: &str = "000";

/// The client a request logs on to (`sap-client`).
fn sap_client(headers: &HeaderMap) -> String {
    headers
        .get("sap-client")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(DEFAULT_CLIENT)
        .to_string()
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let expected = format!("{USER}:{}", lock(&shared.secret));
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|d| d == expected.as_bytes())
}

fn unauthorized() -> Response {
    let mut r = (StatusCode::UNAUTHORIZED, "Logon failed").into_response();
    r.headers_mut().insert(
        "www-authenticate",
        "Basic realm=\"SAP NetWeaver\""
            .parse()
            .expect("a valid header value"),
    );
    r
}

async fn root(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let mut r = json(
        StatusCode::OK,
        json!({"d": {"EntitySets": ["A_PurchaseOrder", "A_PurchaseOrderItem"]}}),
    );
    if headers
        .get("x-csrf-token")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"fetch"))
    {
        // The token and the session belong to the client logged on to: the
        // request's `sap-client`, else the system's default client.
        let client = sap_client(&headers);
        let token = format!("csrf-{client}-{}", shared.next_seq());
        lock(&shared.tokens).insert(token.clone(), i64::MAX);
        r.headers_mut()
            .insert("x-csrf-token", token.parse().expect("a valid header value"));
        r.headers_mut().insert(
            "set-cookie",
            format!("SAP_SESSIONID_S4H_{client}={token}-session; path=/; HttpOnly")
                .parse()
                .expect("a valid header value"),
        );
    }
    r
}

/// The request asks for the items inline.
fn expanded(q: &[(String, String)]) -> bool {
    param(q, "$expand").is_some_and(|e| e.contains("to_PurchaseOrderItem"))
}

fn expand(mut po: Value, q: &[(String, String)]) -> Value {
    if !expanded(q)
        && let Some(o) = po.as_object_mut()
    {
        o.insert(
            "to_PurchaseOrderItem".into(),
            json!({"__deferred": {"uri": "A_PurchaseOrderItem"}}),
        );
    }
    po
}

async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let q = pairs(raw.as_deref());
    if param(&q, "$format").is_some_and(|f| f != "json") {
        return error(
            StatusCode::BAD_REQUEST,
            "FORMAT",
            "only $format=json is served",
        );
    }
    let after = match param(&q, "$filter") {
        Some(f) => {
            if !f.starts_with("LastChangeDateTime gt datetimeoffset'") {
                return error(
                    StatusCode::BAD_REQUEST,
                    "/IWBEP/CM_MGW_RT/022",
                    &format!("Invalid filter expression: '{f}'"),
                );
            }
            match timestamp_in(f) {
                Some(t) => Some(t),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "/IWBEP/CM_MGW_RT/022",
                        "Invalid datetimeoffset literal",
                    );
                }
            }
        }
        None => None,
    };
    // The service pages by itself (MAX_TOP, or the test's cap); `$top`
    // caps the whole result and a result it cuts has no `__next`.
    let top: usize = param(&q, "$top")
        .and_then(|t| t.parse().ok())
        .unwrap_or(usize::MAX);
    let skip: usize = param(&q, "$skiptoken")
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let page_size = shared.cap(MAX_TOP).min(top.saturating_sub(skip));
    // The page is written as text: the records' stored JSON when expanded,
    // else each record re-written without its items.
    let expanded = expanded(&q);
    let with_results = !*lock(&shared.no_records_key);
    let (mut body, count, total) = shared.with_page(POS, after, skip, page_size, |page, total| {
        let mut body = String::from("{\"d\":{");
        if with_results {
            body.push_str("\"results\":[");
            for (i, r) in page.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                if expanded {
                    body.push_str(r.json());
                } else {
                    body.push_str(&expand(r.value().clone(), &q).to_string());
                }
            }
            body.push(']');
        }
        (body, page.len(), total)
    });
    let mut field = |name: &str, value: Value| {
        if !body.ends_with('{') {
            body.push(',');
        }
        body.push_str(&format!("\"{name}\":{value}"));
    };
    if param(&q, "$inlinecount") == Some("allpages") {
        field("__count", json!(total.to_string()));
    }
    if skip + count < total.min(top) || *lock(&shared.endless) {
        let next = link(
            &link_base(&shared, &headers),
            &format!("{SERVICE}/A_PurchaseOrder"),
            &q,
            &[("$skiptoken", (skip + page_size).to_string())],
        );
        field("__next", json!(next));
    }
    body.push_str("}}");
    json_text(StatusCode::OK, body)
}

async fn one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(key): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let q = pairs(raw.as_deref());
    let Some(id) = key
        .strip_prefix("A_PurchaseOrder('")
        .and_then(|k| k.strip_suffix("')"))
    else {
        return error(
            StatusCode::NOT_FOUND,
            "/IWBEP/CM_MGW_RT/020",
            "Resource not found for segment",
        );
    };
    let found = shared
        .select(POS, None)
        .into_iter()
        .find(|p| p["PurchaseOrder"] == id);
    match found {
        Some(po) => json(StatusCode::OK, json!({"d": expand(po, &q)})),
        None => error(
            StatusCode::NOT_FOUND,
            "ME/006",
            &format!("Purchase order {id} does not exist"),
        ),
    }
}

async fn create(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if !authorized(&shared, &headers) {
        return unauthorized();
    }
    let client = sap_client(&headers);
    let token_ok = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.starts_with(&format!("csrf-{client}-")) && lock(&shared.tokens).contains_key(t)
        });
    let cookie_ok = headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.contains(&format!("SAP_SESSIONID_S4H_{client}=")));
    if !token_ok || !cookie_ok {
        let mut r = (StatusCode::FORBIDDEN, "CSRF token validation failed").into_response();
        r.headers_mut().insert(
            "x-csrf-token",
            "Required".parse().expect("a valid header value"),
        );
        return r;
    }
    let Ok(mut po) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "/IWBEP/CX_MGW_BUSI_EXCEPTION",
            "Malformed JSON body",
        );
    };
    let Some(supplier) = po["Supplier"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "ME/083", "Enter a supplier");
    };
    if !VENDORS.iter().any(|(v, _)| *v == supplier) {
        return error(
            StatusCode::BAD_REQUEST,
            "06/321",
            &format!("Supplier {supplier} does not exist"),
        );
    }
    for item in po["to_PurchaseOrderItem"]["results"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for decimal in ["OrderQuantity", "NetPriceAmount"] {
            if !item[decimal].is_string() {
                return error(
                    StatusCode::BAD_REQUEST,
                    "/IWBEP/CM_MGW_RT/004",
                    &format!(
                        "Property '{decimal}' has invalid value: Edm.Decimal must be a string"
                    ),
                );
            }
        }
    }
    let now = now_ms();
    let id = format!("{}", 4_600_000_000u64 + shared.next_seq());
    po["PurchaseOrder"] = json!(id);
    po["PurchasingProcessingStatus"] = json!("01");
    po["CreationDate"] = json!(sap_date(now - now % 86_400_000));
    po["PurchaseOrderDate"] = json!(sap_date(now - now % 86_400_000));
    po["LastChangeDateTime"] = json!(sap_offset(now));
    po["CreatedByUser"] = json!(USER);
    if let Some(items) = po["to_PurchaseOrderItem"]["results"].as_array_mut() {
        for it in items {
            it["PurchaseOrder"] = json!(id);
        }
    }
    shared.push(POS, now, po.clone());
    json(StatusCode::CREATED, json!({"d": po}))
}
