// Business Central API v2.0 (OData v4) purchase orders and vendors, shaped
// after the published entity reference (field names and types of
// purchaseOrder, purchaseOrderLine, vendor resource types).
namespace bc;

entity companies {
  key id          : UUID;
      name        : String(30);
      purchaseOrders : Composition of many purchaseOrders on purchaseOrders.company = $self;
      vendors     : Composition of many vendors on vendors.company = $self;
}

entity purchaseOrders {
  key id                      : UUID;
      company                 : Association to companies;
      number                  : String(20);
      orderDate               : Date;
      postingDate             : Date;
      vendorId                : UUID;
      vendorNumber            : String(20);
      vendorName              : String(100);
      currencyCode            : String(10);
      purchaser               : String(20);
      requestedReceiptDate    : Date;
      totalAmountExcludingTax : Decimal(18, 2);
      totalTaxAmount          : Decimal(18, 2);
      totalAmountIncludingTax : Decimal(18, 2);
      status                  : String(20);
      lastModifiedDateTime    : Timestamp;
      purchaseOrderLines      : Composition of many purchaseOrderLines on purchaseOrderLines.document = $self;
}

entity purchaseOrderLines {
  key id                 : UUID;
      document           : Association to purchaseOrders;
      sequence           : Integer;
      itemId             : UUID;
      lineType           : String(20);
      lineObjectNumber   : String(20);
      description        : String(100);
      unitOfMeasureCode  : String(10);
      quantity           : Decimal(18, 5);
      directUnitCost     : Decimal(18, 5);
      amountExcludingTax : Decimal(18, 2);
      receivedQuantity   : Decimal(18, 5);
}

entity vendors {
  key id                    : UUID;
      company               : Association to companies;
      number                : String(20);
      displayName           : String(100);
      email                 : String(80);
      phoneNumber           : String(30);
      taxRegistrationNumber : String(20);
      currencyCode          : String(10);
      country               : String(10);
      blocked               : String(10);
      lastModifiedDateTime  : Timestamp;
}
