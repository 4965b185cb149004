//! The unified data model: one shape per business entity, whatever system a
//! record comes from.
//!
//! Every record carries the common fields (`id`, `remote_id`,
//! `connection_id`, `remote_created_at`, `remote_updated_at`,
//! `remote_was_deleted`, `custom_fields`, and `raw` when asked for). Statuses
//! are normalized enums; the system's own value is kept in `remote_status`.
//! Records travel through the engine as JSON; the types here define, validate
//! and document that JSON (their JSON Schemas come from `schemars`).

pub mod money;
pub mod shape;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The entities of the unified model.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Entity {
    /// [`PurchaseOrder`]
    PurchaseOrder,
    /// [`WorkOrder`]
    WorkOrder,
    /// [`Vendor`]
    Vendor,
    /// [`InventoryItem`]
    InventoryItem,
    /// [`Asset`]
    Asset,
}

impl Entity {
    /// Every entity.
    pub const ALL: [Entity; 5] = [
        Entity::PurchaseOrder,
        Entity::WorkOrder,
        Entity::Vendor,
        Entity::InventoryItem,
        Entity::Asset,
    ];

    /// The name used in flows and URLs.
    pub fn name(self) -> &'static str {
        match self {
            Entity::PurchaseOrder => "purchase_order",
            Entity::WorkOrder => "work_order",
            Entity::Vendor => "vendor",
            Entity::InventoryItem => "inventory_item",
            Entity::Asset => "asset",
        }
    }

    /// The JSON Schema of a record of this entity.
    pub fn json_schema(self) -> Value {
        let schema = match self {
            Entity::PurchaseOrder => schemars::schema_for!(PurchaseOrder),
            Entity::WorkOrder => schemars::schema_for!(WorkOrder),
            Entity::Vendor => schemars::schema_for!(Vendor),
            Entity::InventoryItem => schemars::schema_for!(InventoryItem),
            Entity::Asset => schemars::schema_for!(Asset),
        };
        serde_json::to_value(schema).expect("a schemars schema always serializes")
    }

    /// The static type of a record of this entity, for expression checks.
    pub fn value_type(self) -> crate::expr::types::Type {
        use std::collections::BTreeMap;
        use std::sync::LazyLock;
        static TYPES: LazyLock<BTreeMap<Entity, crate::expr::types::Type>> = LazyLock::new(|| {
            Entity::ALL
                .into_iter()
                .map(|e| {
                    let schema = e.json_schema();
                    (
                        e,
                        crate::expr::types::Type::from_schema(&schema, &schema).named(e.name()),
                    )
                })
                .collect()
        });
        TYPES[&self].clone()
    }

    /// Top-level field names of a record of this entity.
    pub fn fields(self) -> BTreeSet<String> {
        self.json_schema()
            .get("properties")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Checks that `record` is a valid record of this entity and returns it
    /// normalized (as the typed model serializes it).
    pub fn validate(self, record: &Value) -> Result<Value, RecordError> {
        self.validate_owned(record.clone())
    }
}

impl Entity {
    /// Like [`Entity::validate`], taking the record by value (its strings are
    /// moved, not copied: the connectors' hot path).
    pub fn validate_owned(self, record: Value) -> Result<Value, RecordError> {
        fn check<T: serde::de::DeserializeOwned + Serialize>(
            v: Value,
        ) -> Result<Value, RecordError> {
            let typed: T = serde_json::from_value(v).map_err(|e| RecordError {
                message: e.to_string(),
            })?;
            Ok(serde_json::to_value(typed).expect("model types always serialize"))
        }
        match self {
            Entity::PurchaseOrder => check::<PurchaseOrder>(record),
            Entity::WorkOrder => check::<WorkOrder>(record),
            Entity::Vendor => check::<Vendor>(record),
            Entity::InventoryItem => check::<InventoryItem>(record),
            Entity::Asset => check::<Asset>(record),
        }
    }
}

/// A record that does not fit the unified model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid record: {message}")]
pub struct RecordError {
    /// What is wrong, naming the field.
    pub message: String,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Entity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Entity::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown entity `{s}`"))
    }
}

/// Free-form fields a system has beyond the model (`custbody_*`, `YY1_*`...).
pub type CustomFields = Map<String, Value>;

/// Normalized purchase-order status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PurchaseOrderStatus {
    /// Being written; not sent for approval.
    Draft,
    /// Waiting for approval.
    PendingApproval,
    /// Approved and sent to the vendor.
    Approved,
    /// Some lines received.
    PartiallyReceived,
    /// Fully received and closed.
    Completed,
    /// Cancelled.
    Cancelled,
    /// A status the connection's value map does not name; the system's
    /// own value is in `remote_status`.
    Other,
}

/// A purchase order with its lines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseOrder {
    /// Sluice id of the record.
    pub id: String,
    /// The id in the connected system.
    pub remote_id: String,
    /// The connection the record came from.
    pub connection_id: String,
    /// Created in the connected system.
    pub remote_created_at: DateTime<Utc>,
    /// Last changed in the connected system.
    pub remote_updated_at: DateTime<Utc>,
    /// Deleted in the connected system.
    #[serde(default)]
    pub remote_was_deleted: bool,
    /// Document number shown to people.
    pub number: String,
    /// The vendor's record id.
    pub vendor_id: String,
    /// The vendor's name, when the system returns it.
    #[serde(default)]
    pub vendor_name: Option<String>,
    /// Normalized status.
    pub status: PurchaseOrderStatus,
    /// The system's own status value.
    #[serde(default)]
    pub remote_status: Option<String>,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Order total in `currency`, tax included where the system reports tax
    /// (else the net total, as `total_excluding_tax`).
    #[serde(with = "money::number")]
    #[schemars(with = "f64")]
    pub total: Decimal,
    /// Order total before tax, when the system reports it.
    #[serde(default, with = "money::option")]
    #[schemars(with = "Option<f64>")]
    pub total_excluding_tax: Option<Decimal>,
    /// Tax of the order, when the system reports it.
    #[serde(default, with = "money::option")]
    #[schemars(with = "Option<f64>")]
    pub tax_total: Option<Decimal>,
    /// Order date.
    pub order_date: NaiveDate,
    /// Expected delivery date.
    #[serde(default)]
    pub expected_date: Option<NaiveDate>,
    /// Buyer responsible for the order.
    #[serde(default)]
    pub buyer: Option<String>,
    /// Order lines.
    #[serde(default)]
    pub lines: Vec<PurchaseOrderLine>,
    /// Fields beyond the model.
    #[serde(default)]
    pub custom_fields: CustomFields,
    /// The system's raw payload, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// One line of a purchase order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseOrderLine {
    /// 1-based line number.
    pub line_number: u32,
    /// Inventory item ordered, if any.
    #[serde(default)]
    pub item_id: Option<String>,
    /// What is ordered.
    pub description: String,
    /// Quantity ordered.
    #[serde(with = "money::number")]
    #[schemars(with = "f64")]
    pub quantity: Decimal,
    /// Unit of measure, e.g. `EA`, `KG`.
    pub unit_of_measure: String,
    /// Price per unit.
    #[serde(with = "money::number")]
    #[schemars(with = "f64")]
    pub unit_price: Decimal,
    /// `quantity * unit_price`.
    #[serde(with = "money::number")]
    #[schemars(with = "f64")]
    pub amount: Decimal,
    /// Quantity received so far.
    #[serde(default, with = "money::number")]
    #[schemars(with = "f64")]
    pub received_quantity: Decimal,
}

/// Normalized work-order status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkOrderStatus {
    /// Created, not yet approved or planned.
    Open,
    /// Approved and planned.
    Scheduled,
    /// Work has started.
    InProgress,
    /// Waiting on parts or access.
    OnHold,
    /// Work is done.
    Completed,
    /// Cancelled.
    Cancelled,
    /// A status the connection's value map does not name; the system's
    /// own value is in `remote_status`.
    Other,
}

/// Normalized priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Urgent: safety or production at stake.
    Urgent,
}

/// A maintenance work order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkOrder {
    /// Sluice id of the record.
    pub id: String,
    /// The id in the connected system.
    pub remote_id: String,
    /// The connection the record came from.
    pub connection_id: String,
    /// Created in the connected system.
    pub remote_created_at: DateTime<Utc>,
    /// Last changed in the connected system.
    pub remote_updated_at: DateTime<Utc>,
    /// Deleted in the connected system.
    #[serde(default)]
    pub remote_was_deleted: bool,
    /// Work order number.
    pub number: String,
    /// What is to be done.
    pub description: String,
    /// Normalized status.
    pub status: WorkOrderStatus,
    /// The system's own status value.
    #[serde(default)]
    pub remote_status: Option<String>,
    /// Priority.
    pub priority: Priority,
    /// `corrective`, `preventive`, `inspection`...
    #[serde(default)]
    pub work_type: Option<String>,
    /// The asset worked on.
    #[serde(default)]
    pub asset_id: Option<String>,
    /// Person or crew assigned.
    #[serde(default)]
    pub assigned_to: Option<String>,
    /// Due date.
    #[serde(default)]
    pub due_date: Option<NaiveDate>,
    /// When the work was finished.
    #[serde(default)]
    pub completed_at: Option<DateTime<Utc>>,
    /// Estimated labour hours.
    #[serde(default, with = "money::option")]
    #[schemars(with = "Option<f64>")]
    pub estimated_hours: Option<Decimal>,
    /// Fields beyond the model.
    #[serde(default)]
    pub custom_fields: CustomFields,
    /// The system's raw payload, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// Normalized vendor status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VendorStatus {
    /// Orders may be placed.
    Active,
    /// No longer used.
    Inactive,
    /// Blocked for purchasing or payment.
    Blocked,
    /// A status the connection's value map does not name; the system's
    /// own value is in `remote_status`.
    Other,
}

/// A vendor (supplier).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Vendor {
    /// Sluice id of the record.
    pub id: String,
    /// The id in the connected system.
    pub remote_id: String,
    /// The connection the record came from.
    pub connection_id: String,
    /// Created in the connected system.
    pub remote_created_at: DateTime<Utc>,
    /// Last changed in the connected system.
    pub remote_updated_at: DateTime<Utc>,
    /// Deleted in the connected system.
    #[serde(default)]
    pub remote_was_deleted: bool,
    /// Legal name.
    pub name: String,
    /// Normalized status.
    pub status: VendorStatus,
    /// The system's own status value.
    #[serde(default)]
    pub remote_status: Option<String>,
    /// Tax id.
    #[serde(default)]
    pub tax_id: Option<String>,
    /// Contact e-mail.
    #[serde(default)]
    pub email: Option<String>,
    /// Contact phone.
    #[serde(default)]
    pub phone: Option<String>,
    /// Default currency.
    #[serde(default)]
    pub currency: Option<String>,
    /// Payment terms code, e.g. `NET30`.
    #[serde(default)]
    pub payment_terms: Option<String>,
    /// Country (ISO 3166 alpha-2).
    #[serde(default)]
    pub country: Option<String>,
    /// Fields beyond the model.
    #[serde(default)]
    pub custom_fields: CustomFields,
    /// The system's raw payload, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// Normalized inventory-item status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InventoryItemStatus {
    /// Stocked and orderable.
    Active,
    /// No longer stocked.
    Discontinued,
    /// A status the connection's value map does not name; the system's
    /// own value is in `remote_status`.
    Other,
}

/// An inventory item (stock-keeping unit at a location).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InventoryItem {
    /// Sluice id of the record.
    pub id: String,
    /// The id in the connected system.
    pub remote_id: String,
    /// The connection the record came from.
    pub connection_id: String,
    /// Created in the connected system.
    pub remote_created_at: DateTime<Utc>,
    /// Last changed in the connected system.
    pub remote_updated_at: DateTime<Utc>,
    /// Deleted in the connected system.
    #[serde(default)]
    pub remote_was_deleted: bool,
    /// Stock-keeping unit.
    pub sku: String,
    /// Item name.
    pub name: String,
    /// Normalized status.
    pub status: InventoryItemStatus,
    /// The system's own status value.
    #[serde(default)]
    pub remote_status: Option<String>,
    /// Unit of measure.
    pub unit_of_measure: String,
    /// Quantity on hand.
    #[serde(with = "money::number")]
    #[schemars(with = "f64")]
    pub quantity_on_hand: Decimal,
    /// Quantity free to promise.
    #[serde(with = "money::number")]
    #[schemars(with = "f64")]
    pub quantity_available: Decimal,
    /// Reorder when available stock falls to this.
    #[serde(default, with = "money::option")]
    #[schemars(with = "Option<f64>")]
    pub reorder_point: Option<Decimal>,
    /// Standard cost per unit.
    #[serde(default, with = "money::option")]
    #[schemars(with = "Option<f64>")]
    pub unit_cost: Option<Decimal>,
    /// Warehouse or storeroom.
    #[serde(default)]
    pub location: Option<String>,
    /// Fields beyond the model.
    #[serde(default)]
    pub custom_fields: CustomFields,
    /// The system's raw payload, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// Normalized asset status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssetStatus {
    /// In service.
    Operating,
    /// Not yet in service.
    NotReady,
    /// Broken down.
    Down,
    /// Retired.
    Decommissioned,
    /// A status the connection's value map does not name; the system's
    /// own value is in `remote_status`.
    Other,
}

/// A maintained asset (machine, vehicle, facility component).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    /// Sluice id of the record.
    pub id: String,
    /// The id in the connected system.
    pub remote_id: String,
    /// The connection the record came from.
    pub connection_id: String,
    /// Created in the connected system.
    pub remote_created_at: DateTime<Utc>,
    /// Last changed in the connected system.
    pub remote_updated_at: DateTime<Utc>,
    /// Deleted in the connected system.
    #[serde(default)]
    pub remote_was_deleted: bool,
    /// Asset tag.
    pub tag: String,
    /// Asset name.
    pub name: String,
    /// Normalized status.
    pub status: AssetStatus,
    /// The system's own status value.
    #[serde(default)]
    pub remote_status: Option<String>,
    /// Asset class, e.g. `pump`.
    #[serde(default)]
    pub category: Option<String>,
    /// Site or location.
    #[serde(default)]
    pub location: Option<String>,
    /// Manufacturer.
    #[serde(default)]
    pub manufacturer: Option<String>,
    /// Model.
    #[serde(default)]
    pub model: Option<String>,
    /// Serial number.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// Date put in service.
    #[serde(default)]
    pub install_date: Option<NaiveDate>,
    /// Criticality rank.
    #[serde(default)]
    pub criticality: Option<Priority>,
    /// Fields beyond the model.
    #[serde(default)]
    pub custom_fields: CustomFields,
    /// The system's raw payload, when asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<Value>,
}

/// The fields every record has, whatever its entity.
pub const COMMON_FIELDS: &[&str] = &[
    "id",
    "remote_id",
    "connection_id",
    "remote_created_at",
    "remote_updated_at",
    "remote_was_deleted",
    "custom_fields",
    "raw",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entity_schema_has_the_common_fields() {
        for e in Entity::ALL {
            let fields = e.fields();
            for f in COMMON_FIELDS {
                assert!(fields.contains(*f), "{e} lacks {f}");
            }
        }
    }

    #[test]
    fn validate_names_the_bad_field() {
        let err = Entity::Vendor
            .validate(&serde_json::json!({"id": "x", "name": 3}))
            .unwrap_err();
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }
}
