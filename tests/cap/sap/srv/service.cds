using sap from '../db/schema';

// OData v4 here; the v2 adapter (server.js) serves it as OData v2 at
// /sap/opu/odata/sap/API_PURCHASEORDER_PROCESS_SRV.
@protocol: [
  { kind: 'odata', path: '/odata/v4/API_PURCHASEORDER_PROCESS_SRV' },
  { kind: 'odata-v2', path: '/sap/opu/odata/sap/API_PURCHASEORDER_PROCESS_SRV' }
]
service API_PURCHASEORDER_PROCESS_SRV {
  entity A_PurchaseOrder     as projection on sap.A_PurchaseOrder;
  entity A_PurchaseOrderItem as projection on sap.A_PurchaseOrderItem;
}
