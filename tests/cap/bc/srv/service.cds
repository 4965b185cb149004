using bc from '../db/schema';

// Served where Business Central serves API v2.0 for tenant `cap-tenant`,
// environment `production`: /v2.0/{tenant}/{environment}/api/v2.0.
@path: '/v2.0/cap-tenant/production/api/v2.0'
service APIV2 {
  entity companies          as projection on bc.companies;
  entity purchaseOrders     as projection on bc.purchaseOrders;
  entity purchaseOrderLines as projection on bc.purchaseOrderLines;
  entity vendors            as projection on bc.vendors;
}
