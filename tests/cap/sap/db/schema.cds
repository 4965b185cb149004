// SAP S/4HANA API_PURCHASEORDER_PROCESS_SRV (OData v2), shaped after the
// published metadata of A_PurchaseOrder and A_PurchaseOrderItem: field
// names, lengths and types (Edm.Decimal, Edm.DateTime with display format
// Date, Edm.DateTimeOffset), plus one key user extension field (YY1_*).
namespace sap;

entity A_PurchaseOrder {
  key PurchaseOrder                  : String(10);
      CompanyCode                    : String(4);
      PurchaseOrderType              : String(4);
      PurchasingDocumentDeletionCode : String(1);
      PurchasingProcessingStatus     : String(2);
      CreatedByUser                  : String(12);
      CreationDate                   : Date;
      LastChangeDateTime             : Timestamp;
      Supplier                       : String(10);
      PurchasingOrganization         : String(4);
      PurchasingGroup                : String(3);
      DocumentCurrency               : String(5);
      PurchaseOrderDate              : Date;
      YY1_Plant_PDH                  : String(4);
      to_PurchaseOrderItem           : Composition of many A_PurchaseOrderItem
                                         on to_PurchaseOrderItem.PurchaseOrder = $self.PurchaseOrder;
}

entity A_PurchaseOrderItem {
  key PurchaseOrder                  : String(10);
  key PurchaseOrderItem              : String(5);
      PurchasingDocumentDeletionCode : String(1);
      PurchaseOrderItemText          : String(40);
      Plant                          : String(4);
      Material                       : String(40);
      OrderQuantity                  : Decimal(13, 3);
      PurchaseOrderQuantityUnit      : String(3);
      NetPriceAmount                 : Decimal(16, 3);
      NetPriceQuantity               : Decimal(5, 0);
      DocumentCurrency               : String(5);
}
