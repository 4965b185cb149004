// Writes the seed CSVs (committed; run again only to change them): 40
// purchase orders 4500000000.. of 2 items each (items 10 and 20), one
// changed every hour from 2024-01-01T00:00:00Z.
const fs = require('fs');
const path = require('path');
const dir = path.join(__dirname, 'db', 'data');
const csv = (rows) => rows.map((r) => r.join(';')).join('\n') + '\n';
const hour = (h) => new Date(Date.UTC(2024, 0, 1) + h * 3600e3).toISOString();
// 04 (partially released) too: a value a definition's map can easily miss.
const statuses = ['01', '02', '03', '05', '04'];
const suppliers = ['17300001', '17300002', '17300003'];
const pos = [['PurchaseOrder', 'CompanyCode', 'PurchaseOrderType', 'PurchasingDocumentDeletionCode',
  'PurchasingProcessingStatus', 'CreatedByUser', 'CreationDate', 'LastChangeDateTime', 'Supplier',
  'PurchasingOrganization', 'PurchasingGroup', 'DocumentCurrency', 'PurchaseOrderDate', 'YY1_Plant_PDH']];
const items = [['PurchaseOrder', 'PurchaseOrderItem', 'PurchasingDocumentDeletionCode', 'PurchaseOrderItemText',
  'Plant', 'Material', 'OrderQuantity', 'PurchaseOrderQuantityUnit', 'NetPriceAmount', 'NetPriceQuantity',
  'DocumentCurrency']];
// Prices are per NetPriceQuantity units (the price unit): the second item of
// every fourth order from 4500000001 is priced per 100 pieces, of every fourth
// from 4500000003 per 1,000 (same unit price). 4500000005 has a third item
// deleted (deletion code L); 4500000006 is deleted as a whole.
for (let i = 0; i < 40; i++) {
  const po = String(4500000000 + i);
  pos.push([po, '1010', 'NB', i === 6 ? 'L' : '', statuses[i % 5], 'CB9980000010', hour(i).slice(0, 10), hour(i),
    suppliers[i % 3], '1010', '001', 'EUR', hour(i).slice(0, 10), 'PL0' + (i % 3)]);
  for (let l = 1; l <= 2; l++) {
    const unit = l === 2 && i % 4 === 1 ? 100 : l === 2 && i % 4 === 3 ? 1000 : 1;
    items.push([po, String(l * 10), '', `Item ${l} of ${po}`, '1010', `TG1${l}`, (l * 2 + i % 3).toFixed(3), 'PC',
      ((10 + i + l / 4) * unit).toFixed(2), String(unit), 'EUR']);
  }
  if (i === 5) {
    items.push([po, '30', 'L', `Item 3 of ${po} (deleted)`, '1010', 'TG13', '1000.000', 'PC', '99.00', '1', 'EUR']);
  }
}
fs.mkdirSync(dir, { recursive: true });
fs.writeFileSync(path.join(dir, 'sap-A_PurchaseOrder.csv'), csv(pos));
fs.writeFileSync(path.join(dir, 'sap-A_PurchaseOrderItem.csv'), csv(items));
