//! The built-in `sandbox` connection: listing, filters, paging, writes.

use chrono::{TimeZone, Utc};
use serde_json::json;
use sluice::connectors::sandbox::SandboxConnector;
use sluice::connectors::{Connector, ConnectorErrorKind, ListQuery, WriteRequest};
use sluice::unified::Entity;

#[tokio::test]
async fn field_filters_match_values_and_lists() {
    let c = SandboxConnector::new();
    let mut q = ListQuery::default();
    q.filters.insert("status".into(), json!("approved"));
    let page = c.list(Entity::PurchaseOrder, &q).await.unwrap();
    assert!(!page.records.is_empty());
    assert!(page.records.iter().all(|r| r["status"] == "approved"));
    q.filters
        .insert("status".into(), json!(["draft", "cancelled"]));
    let page = c.list(Entity::PurchaseOrder, &q).await.unwrap();
    assert!(
        page.records
            .iter()
            .all(|r| r["status"] == "draft" || r["status"] == "cancelled")
    );
    assert!(
        page.records.iter().any(|r| r["status"] == "draft")
            && page.records.iter().any(|r| r["status"] == "cancelled")
    );
    let mut q = ListQuery::default();
    q.filters
        .insert("custom_fields.YY1_ProjectCode".into(), json!("PRJ-102"));
    let page = c.list(Entity::PurchaseOrder, &q).await.unwrap();
    assert_eq!(page.records.len(), 1);
    assert_eq!(page.records[0]["remote_id"], "4500000003");
}

#[tokio::test]
async fn modified_after_and_cursor_pagination_walk_every_record_once() {
    let c = SandboxConnector::new();
    let since = Utc.with_ymd_and_hms(2026, 1, 20, 0, 0, 0).unwrap();
    let mut q = ListQuery {
        modified_after: Some(since),
        limit: Some(7),
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = c.list(Entity::PurchaseOrder, &q).await.unwrap();
        pages += 1;
        seen.extend(
            page.records
                .iter()
                .map(|r| r["remote_id"].as_str().unwrap().to_string()),
        );
        for r in &page.records {
            assert!(r["remote_updated_at"].as_str().unwrap() > "2026-01-20T00:00:00Z");
        }
        match page.next_cursor {
            Some(cur) => q.cursor = Some(cur),
            None => break,
        }
    }
    let all = c
        .list(
            Entity::PurchaseOrder,
            &ListQuery {
                modified_after: Some(since),
                limit: Some(1000),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(seen.len(), all.records.len());
    assert_eq!(pages, all.records.len().div_ceil(7));
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len(), "no record twice");
}

#[tokio::test]
async fn unknown_filter_field_and_bad_cursor_are_validation_errors() {
    let c = SandboxConnector::new();
    let mut q = ListQuery::default();
    q.filters.insert("colour".into(), json!("red"));
    let e = c.list(Entity::Asset, &q).await.unwrap_err();
    assert_eq!(e.kind, ConnectorErrorKind::Validation);
    assert_eq!(
        e.to_string(),
        "sandbox: unknown field `colour` of asset in filter"
    );
    let e = c
        .list(
            Entity::Asset,
            &ListQuery {
                cursor: Some("zz".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "sandbox: invalid cursor `zz`");
}

#[tokio::test]
async fn create_validates_against_the_model_and_is_deterministic_per_key() {
    let c = SandboxConnector::new();
    let data = json!({"number": "WO-NEW", "description": "Check pump", "status": "open", "priority": "high", "asset_id": "A-3001"});
    let req = |key| WriteRequest {
        entity: Entity::WorkOrder,
        remote_id: None,
        data: &data,
        idempotency_key: key,
    };
    let a = c.create(req("run1:step")).await.unwrap();
    let b = c.create(req("run1:step")).await.unwrap();
    assert_eq!(
        a["remote_id"], b["remote_id"],
        "same idempotency key, same record"
    );
    assert_eq!(a["connection_id"], "sandbox");
    assert_eq!(a["priority"], "high");
    let missing = json!({"number": "WO-NEW", "status": "open", "priority": "high"});
    let e = c
        .create(WriteRequest {
            entity: Entity::WorkOrder,
            remote_id: None,
            data: &missing,
            idempotency_key: "k",
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ConnectorErrorKind::Validation);
    assert_eq!(e.message, "invalid record: missing field `description`");
    let unknown = json!({"number": "X", "description": "d", "status": "open", "priority": "low", "colour": "red"});
    let e = c
        .create(WriteRequest {
            entity: Entity::WorkOrder,
            remote_id: None,
            data: &unknown,
            idempotency_key: "k",
        })
        .await
        .unwrap_err();
    assert!(
        e.message
            .starts_with("invalid record: unknown field `colour`"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn update_and_delete_return_the_would_be_record_and_change_nothing() {
    let c = SandboxConnector::new();
    let before = c.get(Entity::Vendor, "V-1001").await.unwrap();
    let data = json!({"status": "blocked"});
    let updated = c
        .update(WriteRequest {
            entity: Entity::Vendor,
            remote_id: Some("V-1001"),
            data: &data,
            idempotency_key: "k",
        })
        .await
        .unwrap();
    assert_eq!(updated["status"], "blocked");
    let deleted = c
        .delete(WriteRequest {
            entity: Entity::Vendor,
            remote_id: Some("V-1001"),
            data: &json!(null),
            idempotency_key: "k",
        })
        .await
        .unwrap();
    assert_eq!(deleted["remote_was_deleted"], true);
    assert_eq!(c.get(Entity::Vendor, "V-1001").await.unwrap(), before);
    let e = c
        .update(WriteRequest {
            entity: Entity::Vendor,
            remote_id: Some("V-0000"),
            data: &data,
            idempotency_key: "k",
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind, ConnectorErrorKind::NotFound);
    let e = c
        .update(WriteRequest {
            entity: Entity::Vendor,
            remote_id: Some("V-1001"),
            data: &json!({"remote_id": "V-2"}),
            idempotency_key: "k",
        })
        .await
        .unwrap_err();
    assert_eq!(
        e.message,
        "invalid record: field `remote_id` cannot be changed"
    );
}
