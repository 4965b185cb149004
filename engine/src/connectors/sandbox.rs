//! The `sandbox` connection: built-in sample data, always available.
//!
//! It lets anyone run a flow with no system connected. The data is fixed and
//! deterministic: 60 purchase orders (standard orders, orders with custom
//! fields, every status, two with a vendor that does not exist, lines with
//! out-of-stock items), 25 work orders in every status, 12 vendors, 30
//! inventory items (five out of stock) and 15 assets. Writes are validated
//! against the unified model and return the would-be record; nothing changes.

use std::sync::LazyLock;

use async_trait::async_trait;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{
    ConnectionStatus, Connector, ConnectorError, ConnectorErrorKind, ListQuery, Page, WriteRequest,
};
use crate::unified::{
    Asset, AssetStatus, Entity, InventoryItem, InventoryItemStatus, Priority, PurchaseOrder,
    PurchaseOrderLine, PurchaseOrderStatus, Vendor, VendorStatus, WorkOrder, WorkOrderStatus,
};

/// The name of the built-in sandbox connection.
pub const CONNECTION: &str = "sandbox";
/// Page size when a list asks for none.
pub const DEFAULT_LIMIT: usize = 100;
/// Largest page size.
pub const MAX_LIMIT: usize = 1000;
/// A vendor id that purchase orders reference but that does not exist.
pub const MISSING_VENDOR_ID: &str = "V-9999";

/// The sandbox data set, by entity, sorted by (`remote_updated_at`, `remote_id`).
pub struct SandboxData {
    /// Purchase orders.
    pub purchase_orders: Vec<Value>,
    /// Work orders.
    pub work_orders: Vec<Value>,
    /// Vendors.
    pub vendors: Vec<Value>,
    /// Inventory items.
    pub inventory_items: Vec<Value>,
    /// Assets.
    pub assets: Vec<Value>,
}

impl SandboxData {
    /// The records of an entity.
    pub fn records(&self, entity: Entity) -> &[Value] {
        match entity {
            Entity::PurchaseOrder => &self.purchase_orders,
            Entity::WorkOrder => &self.work_orders,
            Entity::Vendor => &self.vendors,
            Entity::InventoryItem => &self.inventory_items,
            Entity::Asset => &self.assets,
        }
    }
}

/// The one shared copy of the sandbox data.
pub static DATA: LazyLock<SandboxData> = LazyLock::new(build_data);

fn at(base_hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0)
        .single()
        .expect("fixed valid date")
        + Duration::hours(base_hours)
}

fn date(days: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 1, 5).expect("fixed valid date") + Duration::days(days)
}

const VENDOR_NAMES: [&str; 12] = [
    "Acme Industrial Supply",
    "Nordic Bearings AB",
    "Rheinmetall Fasteners GmbH",
    "Pacific Hydraulics Co",
    "Gulf Coast Valves",
    "Alpine Electric Motors",
    "Tata Steel Distribution",
    "Midwest Lubricants",
    "Osaka Precision Tools",
    "Iberia Safety Equipment",
    "Great Lakes Pumps",
    "Andes Filtration",
];

const ITEMS: [(&str, &str, f64); 30] = [
    ("Ball bearing 6204-2RS", "EA", 4.2),
    ("Hydraulic hose 1/2in", "M", 11.5),
    ("Hex bolt M12x50", "EA", 0.35),
    ("Gear oil ISO VG 220", "L", 6.8),
    ("V-belt B52", "EA", 14.0),
    ("Mechanical seal 35mm", "EA", 210.0),
    ("Pressure gauge 0-10 bar", "EA", 48.0),
    ("Safety gloves cut 5", "BOX", 36.0),
    ("Air filter element", "EA", 62.0),
    ("Contactor 3P 40A", "EA", 88.0),
    ("Proximity sensor M18", "EA", 54.0),
    ("Grease EP2 cartridge", "EA", 7.9),
    ("Stainless pipe DN50", "M", 42.0),
    ("Gate valve DN80", "EA", 390.0),
    ("Motor 7.5kW IE3", "EA", 1450.0),
    ("Coupling insert", "EA", 19.0),
    ("Welding rod E7018", "KG", 9.4),
    ("Conveyor belt splice kit", "EA", 260.0),
    ("Pump impeller 200mm", "EA", 780.0),
    ("Thermocouple type K", "EA", 33.0),
    ("Cable tie 300mm", "BOX", 12.0),
    ("O-ring kit NBR", "BOX", 28.0),
    ("Hydraulic filter 10um", "EA", 71.0),
    ("VFD 11kW", "EA", 2100.0),
    ("Chain ANSI 80", "M", 24.0),
    ("Sprocket 80B19", "EA", 96.0),
    ("Ear plugs", "BOX", 18.0),
    ("Solenoid valve 24VDC", "EA", 125.0),
    ("Lockout padlock", "EA", 15.0),
    ("Anti-seize compound", "EA", 16.5),
];

/// Items with nothing available.
const OUT_OF_STOCK: [usize; 5] = [5, 13, 18, 23, 27];

fn to_json<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("model types always serialize")
}

fn build_data() -> SandboxData {
    let vendors: Vec<Value> = VENDOR_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let remote_id = format!("V-{}", 1001 + i);
            let (status, remote) = match i {
                9 => (VendorStatus::Inactive, "Inactive"),
                11 => (VendorStatus::Blocked, "Blocked for posting"),
                _ => (VendorStatus::Active, "Active"),
            };
            to_json(Vendor {
                id: format!("vendor_{remote_id}"),
                remote_id,
                connection_id: CONNECTION.into(),
                remote_created_at: at(-2000 + i as i64),
                remote_updated_at: at(i as i64 * 5),
                remote_was_deleted: false,
                name: (*name).into(),
                status,
                remote_status: Some(remote.into()),
                tax_id: Some(format!("TAX{:07}", 4_300_000 + i * 97)),
                email: Some(format!("orders@vendor{}.example", 1001 + i)),
                phone: Some(format!("+1-555-01{:02}", i)),
                currency: Some(if i % 4 == 1 { "EUR" } else { "USD" }.into()),
                payment_terms: Some(if i % 3 == 0 { "NET60" } else { "NET30" }.into()),
                country: Some(
                    [
                        "US", "SE", "DE", "US", "US", "CH", "IN", "US", "JP", "ES", "US", "CL",
                    ][i]
                        .into(),
                ),
                custom_fields: Map::new(),
                raw: None,
            })
        })
        .collect();

    let inventory_items: Vec<Value> = ITEMS
        .iter()
        .enumerate()
        .map(|(i, (name, uom, cost))| {
            let remote_id = format!("ITM-{}", 2001 + i);
            let on_hand = if OUT_OF_STOCK.contains(&i) {
                0.0
            } else {
                (10 + (i * 37) % 190) as f64
            };
            to_json(InventoryItem {
                id: format!("inventory_item_{remote_id}"),
                remote_id: remote_id.clone(),
                connection_id: CONNECTION.into(),
                remote_created_at: at(-1500 + i as i64),
                remote_updated_at: at(3 + i as i64 * 11),
                remote_was_deleted: false,
                sku: remote_id,
                name: (*name).into(),
                status: if i == 29 {
                    InventoryItemStatus::Discontinued
                } else {
                    InventoryItemStatus::Active
                },
                remote_status: Some(if i == 29 { "OBSOLETE" } else { "ACTIVE" }.into()),
                unit_of_measure: (*uom).into(),
                quantity_on_hand: dec(on_hand),
                quantity_available: dec(if on_hand > 0.0 {
                    on_hand - (i % 5) as f64
                } else {
                    0.0
                }),
                reorder_point: Some(dec(8.0 + (i % 4) as f64 * 4.0)),
                unit_cost: Some(dec(*cost)),
                location: Some(["WH-MAIN", "WH-EAST", "STORE-01"][i % 3].into()),
                custom_fields: Map::new(),
                raw: None,
            })
        })
        .collect();

    let statuses = [
        (PurchaseOrderStatus::Draft, "Draft"),
        (PurchaseOrderStatus::PendingApproval, "In Approval"),
        (PurchaseOrderStatus::Approved, "Released"),
        (PurchaseOrderStatus::Approved, "Released"),
        (PurchaseOrderStatus::PartiallyReceived, "Partially Received"),
        (PurchaseOrderStatus::Completed, "Closed"),
        (PurchaseOrderStatus::Approved, "Released"),
        (PurchaseOrderStatus::Cancelled, "Cancelled"),
    ];
    let purchase_orders: Vec<Value> = (0..60usize)
        .map(|i| {
            let remote_id = format!("45000{:05}", i + 1);
            let vendor_index = (i * 5) % VENDOR_NAMES.len();
            let (vendor_id, vendor_name) = if i == 17 || i == 43 {
                (MISSING_VENDOR_ID.to_string(), None)
            } else {
                (
                    format!("V-{}", 1001 + vendor_index),
                    Some(VENDOR_NAMES[vendor_index].to_string()),
                )
            };
            let (status, remote_status) = statuses[i % statuses.len()];
            let line_count = 1 + i % 4;
            let lines: Vec<PurchaseOrderLine> = (0..line_count)
                .map(|l| {
                    // Lines of every ninth order include an out-of-stock item.
                    let item = if i % 9 == 0 && l == 0 {
                        OUT_OF_STOCK[(i / 9) % 5]
                    } else {
                        (i * 7 + l * 3) % ITEMS.len()
                    };
                    let (name, uom, cost) = ITEMS[item];
                    let quantity =
                        ((i + 3) * (l + 2) % 40 + 1) as f64 * if i % 10 == 3 { 25.0 } else { 1.0 };
                    let received = match status {
                        PurchaseOrderStatus::Completed => quantity,
                        PurchaseOrderStatus::PartiallyReceived if l == 0 => {
                            (quantity / 2.0).floor()
                        }
                        _ => 0.0,
                    };
                    PurchaseOrderLine {
                        line_number: (l + 1) as u32,
                        item_id: Some(format!("ITM-{}", 2001 + item)),
                        description: name.into(),
                        quantity: dec(quantity),
                        unit_of_measure: uom.into(),
                        unit_price: dec(cost),
                        amount: dec(quantity) * dec(cost),
                        received_quantity: dec(received),
                    }
                })
                .collect();
            let total: Decimal = lines.iter().map(|l| l.amount).sum();
            let mut custom_fields = Map::new();
            if i % 5 == 2 {
                custom_fields.insert(
                    "YY1_ProjectCode".into(),
                    json!(format!("PRJ-{:03}", 100 + i)),
                );
                custom_fields.insert("custbody_requires_inspection".into(), json!(i % 10 == 2));
            }
            to_json(PurchaseOrder {
                id: format!("purchase_order_{remote_id}"),
                remote_id: remote_id.clone(),
                connection_id: CONNECTION.into(),
                remote_created_at: at(i as i64 * 7),
                remote_updated_at: at(i as i64 * 7 + 2 + (i as i64 % 3)),
                remote_was_deleted: false,
                number: remote_id,
                vendor_id,
                vendor_name,
                status,
                remote_status: Some(remote_status.into()),
                currency: if vendor_index % 4 == 1 { "EUR" } else { "USD" }.into(),
                total,
                total_excluding_tax: Some(total),
                tax_total: None,
                order_date: date(i as i64 / 3),
                expected_date: Some(date(i as i64 / 3 + 14)),
                buyer: Some(["j.alvarez", "m.chen", "s.okafor"][i % 3].into()),
                lines,
                custom_fields,
                raw: None,
            })
        })
        .collect();

    let assets: Vec<Value> = (0..15usize)
        .map(|i| {
            let remote_id = format!("A-{}", 3001 + i);
            let (status, remote) = match i {
                4 | 11 => (AssetStatus::Down, "BROKEN"),
                13 => (AssetStatus::NotReady, "NOT READY"),
                14 => (AssetStatus::Decommissioned, "DECOMMISSIONED"),
                _ => (AssetStatus::Operating, "OPERATING"),
            };
            let category = ["pump", "compressor", "conveyor", "boiler", "chiller"][i % 5];
            to_json(Asset {
                id: format!("asset_{remote_id}"),
                remote_id: remote_id.clone(),
                connection_id: CONNECTION.into(),
                remote_created_at: at(-3000 + i as i64),
                remote_updated_at: at(1 + i as i64 * 13),
                remote_was_deleted: false,
                tag: remote_id,
                name: format!("{} {}", category, i / 5 + 1),
                status,
                remote_status: Some(remote.into()),
                category: Some(category.into()),
                location: Some(["PLANT-A", "PLANT-B"][i % 2].into()),
                manufacturer: Some(
                    [
                        "Grundfos",
                        "Atlas Copco",
                        "Interroll",
                        "Cleaver-Brooks",
                        "Trane",
                    ][i % 5]
                        .into(),
                ),
                model: Some(format!("M{}", 100 + i * 10)),
                serial_number: Some(format!("SN{:06}", 880_000 + i * 131)),
                install_date: Some(
                    NaiveDate::from_ymd_opt(2015 + (i % 9) as i32, 1 + (i % 12) as u32, 10)
                        .expect("valid date"),
                ),
                criticality: Some(
                    [
                        Priority::Low,
                        Priority::Medium,
                        Priority::High,
                        Priority::Urgent,
                    ][i % 4],
                ),
                custom_fields: Map::new(),
                raw: None,
            })
        })
        .collect();

    let wo_statuses = [
        (WorkOrderStatus::Open, "WAPPR"),
        (WorkOrderStatus::Scheduled, "APPR"),
        (WorkOrderStatus::InProgress, "INPRG"),
        (WorkOrderStatus::OnHold, "WMATL"),
        (WorkOrderStatus::Completed, "COMP"),
        (WorkOrderStatus::Cancelled, "CAN"),
    ];
    let work_orders: Vec<Value> = (0..25usize)
        .map(|i| {
            let remote_id = format!("WO-{}", 5001 + i);
            let (status, remote) = wo_statuses[i % wo_statuses.len()];
            let created = at(i as i64 * 9);
            to_json(WorkOrder {
                id: format!("work_order_{remote_id}"),
                remote_id: remote_id.clone(),
                connection_id: CONNECTION.into(),
                remote_created_at: created,
                remote_updated_at: created + Duration::hours(4 + (i % 5) as i64),
                remote_was_deleted: false,
                number: remote_id,
                description: [
                    "Replace worn bearing",
                    "Quarterly lubrication",
                    "Inspect pressure relief valve",
                    "Fix conveyor belt misalignment",
                    "Annual boiler inspection",
                ][i % 5]
                    .into(),
                status,
                remote_status: Some(remote.into()),
                priority: [
                    Priority::Low,
                    Priority::Medium,
                    Priority::High,
                    Priority::Urgent,
                ][i % 4],
                work_type: Some(["corrective", "preventive", "inspection"][i % 3].into()),
                asset_id: Some(format!("A-{}", 3001 + i % 15)),
                assigned_to: Some(["crew-mech-1", "crew-elec-1", "r.kowalski"][i % 3].into()),
                due_date: Some(date(i as i64 * 6)),
                completed_at: (status == WorkOrderStatus::Completed)
                    .then(|| created + Duration::days(2)),
                estimated_hours: Some(dec(1.5 + (i % 6) as f64)),
                custom_fields: Map::new(),
                raw: None,
            })
        })
        .collect();

    let sort = |mut v: Vec<Value>| {
        v.sort_by_key(sort_key);
        v
    };
    SandboxData {
        purchase_orders: sort(purchase_orders),
        work_orders: sort(work_orders),
        vendors: sort(vendors),
        inventory_items: sort(inventory_items),
        assets: sort(assets),
    }
}

fn sort_key(v: &Value) -> (String, String) {
    (
        v["remote_updated_at"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        v["remote_id"].as_str().unwrap_or_default().to_string(),
    )
}

fn encode_cursor(v: &Value) -> String {
    let (t, id) = sort_key(v);
    hex::encode(format!("{t}|{id}"))
}

fn decode_cursor(c: &str) -> Option<(String, String)> {
    let text = String::from_utf8(hex::decode(c).ok()?).ok()?;
    let (t, id) = text.split_once('|')?;
    Some((t.to_string(), id.to_string()))
}

/// The sandbox connector.
#[derive(Debug, Default)]
pub struct SandboxConnector;

impl SandboxConnector {
    /// A connector over [`DATA`].
    pub fn new() -> Self {
        SandboxConnector
    }

    fn err(kind: ConnectorErrorKind, message: impl Into<String>) -> ConnectorError {
        ConnectorError::new(CONNECTION, kind, message)
    }

    fn find(&self, entity: Entity, remote_id: &str) -> Result<&'static Value, ConnectorError> {
        DATA.records(entity)
            .iter()
            .find(|r| r["remote_id"] == remote_id)
            .ok_or_else(|| {
                Self::err(
                    ConnectorErrorKind::NotFound,
                    format!("{entity} `{remote_id}` does not exist"),
                )
            })
    }

    /// Business rules beyond the record's shape.
    fn check_references(&self, entity: Entity, record: &Value) -> Result<(), ConnectorError> {
        if entity == Entity::PurchaseOrder {
            let vendor_id = record["vendor_id"].as_str().unwrap_or_default();
            match self.find(Entity::Vendor, vendor_id) {
                Err(_) => {
                    return Err(Self::err(
                        ConnectorErrorKind::Validation,
                        format!(
                            "invalid record: vendor `{vendor_id}` does not exist (field `vendor_id`)"
                        ),
                    ));
                }
                Ok(v) if v["status"] == "blocked" => {
                    return Err(Self::err(
                        ConnectorErrorKind::Validation,
                        format!(
                            "invalid record: vendor `{vendor_id}` is blocked (field `vendor_id`)"
                        ),
                    ));
                }
                Ok(_) => {}
            }
            for (n, line) in record["lines"].as_array().into_iter().flatten().enumerate() {
                if let Some(item) = line["item_id"].as_str()
                    && self.find(Entity::InventoryItem, item).is_err()
                {
                    return Err(Self::err(
                        ConnectorErrorKind::Validation,
                        format!(
                            "invalid record: item `{item}` does not exist (field `lines[{n}].item_id`)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn validate(&self, entity: Entity, record: &Value) -> Result<Value, ConnectorError> {
        let normalized = entity
            .validate(record)
            .map_err(|e| Self::err(ConnectorErrorKind::Validation, e.to_string()))?;
        self.check_references(entity, &normalized)?;
        Ok(normalized)
    }
}

fn merge(base: &mut Value, patch: &Value) {
    if let (Value::Object(b), Value::Object(p)) = (base, patch) {
        for (k, v) in p {
            match (b.get_mut(k), v) {
                (Some(existing @ Value::Object(_)), Value::Object(_)) if k == "custom_fields" => {
                    merge(existing, v)
                }
                _ => {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..6])
}

#[async_trait]
impl Connector for SandboxConnector {
    async fn list(&self, entity: Entity, query: &ListQuery) -> Result<Page, ConnectorError> {
        let fields = entity.fields();
        for key in query.filters.keys() {
            let top = key.split('.').next().unwrap_or(key);
            if !fields.contains(top) {
                return Err(Self::err(
                    ConnectorErrorKind::Validation,
                    format!("unknown field `{key}` of {entity} in filter"),
                ));
            }
        }
        let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let after = match &query.cursor {
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                Self::err(
                    ConnectorErrorKind::Validation,
                    format!("invalid cursor `{c}`"),
                )
            })?),
            None => None,
        };
        let modified_after = query
            .modified_after
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let mut records = Vec::new();
        let mut more = false;
        for r in DATA.records(entity) {
            let key = sort_key(r);
            if after.as_ref().is_some_and(|a| key <= *a) {
                continue;
            }
            if let Some(m) = &modified_after
                && key.0.as_str() <= m.as_str()
            {
                continue;
            }
            if !super::record_matches(r, &query.filters) {
                continue;
            }
            if records.len() == limit {
                more = true;
                break;
            }
            records.push(r.clone());
        }
        let next_cursor = if more {
            records.last().map(encode_cursor)
        } else {
            None
        };
        if query.raw {
            // The sandbox's "system" shape is the unified record itself.
            for r in &mut records {
                let copy = r.clone();
                r["raw"] = copy;
            }
        }
        Ok(Page {
            records,
            next_cursor,
        })
    }

    async fn get(&self, entity: Entity, remote_id: &str) -> Result<Value, ConnectorError> {
        self.find(entity, remote_id).cloned()
    }

    async fn create(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        let suffix = short_hash(req.idempotency_key);
        let remote_id = format!("NEW-{suffix}");
        let now = Utc::now();
        let mut record = json!({
            "id": format!("{}_{remote_id}", req.entity),
            "remote_id": remote_id,
            "connection_id": CONNECTION,
            "remote_created_at": now,
            "remote_updated_at": now,
        });
        merge(&mut record, req.data);
        self.validate(req.entity, &record)
    }

    async fn update(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        let remote_id = req
            .remote_id
            .ok_or_else(|| Self::err(ConnectorErrorKind::Validation, "update needs a record id"))?;
        let mut record = self.find(req.entity, remote_id)?.clone();
        for locked in ["id", "remote_id", "connection_id"] {
            if req.data.get(locked).is_some_and(|v| *v != record[locked]) {
                return Err(Self::err(
                    ConnectorErrorKind::Validation,
                    format!("invalid record: field `{locked}` cannot be changed"),
                ));
            }
        }
        merge(&mut record, req.data);
        record["remote_updated_at"] = json!(Utc::now());
        self.validate(req.entity, &record)
    }

    async fn delete(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        let remote_id = req
            .remote_id
            .ok_or_else(|| Self::err(ConnectorErrorKind::Validation, "delete needs a record id"))?;
        let mut record = self.find(req.entity, remote_id)?.clone();
        record["remote_was_deleted"] = json!(true);
        Ok(record)
    }

    async fn health(&self) -> ConnectionStatus {
        ConnectionStatus::Online
    }

    fn entities(&self) -> Vec<Entity> {
        Entity::ALL.to_vec()
    }
}

/// A sandbox figure as the exact decimal it is written as.
fn dec(f: f64) -> Decimal {
    crate::unified::money::from_f64(f).expect("sandbox figures are finite")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_fits_the_unified_model() {
        for e in Entity::ALL {
            for r in DATA.records(e) {
                e.validate(r)
                    .unwrap_or_else(|err| panic!("{e} {}: {err}", r["remote_id"]));
            }
        }
    }

    #[test]
    fn data_covers_the_documented_cases() {
        let pos = &DATA.purchase_orders;
        assert!(pos.len() >= 50);
        for s in [
            "draft",
            "approved",
            "completed",
            "cancelled",
            "pending_approval",
            "partially_received",
        ] {
            assert!(pos.iter().any(|p| p["status"] == s), "no {s} order");
        }
        assert!(pos.iter().any(|p| p["vendor_id"] == MISSING_VENDOR_ID));
        assert!(
            pos.iter()
                .any(|p| !p["custom_fields"].as_object().unwrap().is_empty())
        );
        let oos: Vec<&str> = DATA
            .inventory_items
            .iter()
            .filter(|i| i["quantity_available"] == 0.0)
            .map(|i| i["remote_id"].as_str().unwrap())
            .collect();
        assert_eq!(oos.len(), 5);
        assert!(pos.iter().any(|p| {
            p["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| oos.contains(&l["item_id"].as_str().unwrap()))
        }));
    }
}
