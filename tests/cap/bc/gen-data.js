// Writes the seed CSVs (committed; run again only to change them):
// one company, 25 purchase orders of 2 lines each (one changed every hour
// from 2024-01-01T00:00:00Z), 5 vendors. `node gen-data.js N DIR` writes N
// orders into DIR instead (the throughput test in engine/tests/cap_odata.rs). Vendor names hold a space, a quote,
// `&`, `#` and non-ASCII so that query values with them can be tested.
const fs = require('fs');
const path = require('path');
const ORDERS = Number(process.argv[2] || 25);
const dir = process.argv[3] || path.join(__dirname, 'db', 'data');
const COMPANY = 'c0c0c0c0-0000-4000-8000-000000000001';
const uuid = (kind, n) => `${kind}0000000-0000-4000-8000-${String(n).padStart(12, '0')}`;
const vendors = [
  ['10000', 'Fabrikam, Inc.'],
  ['20000', "O'Brien & Sons #2"],
  ['30000', 'Müller Söhne GmbH'],
  ['40000', 'Contoso Ltd.'],
  ['50000', 'First Up Consultants'],
];
const csv = (rows) => rows.map((r) => r.map((v) => {
  const s = String(v ?? '');
  return /[;"\n]/.test(s) || s.trim() !== s ? `"${s.replace(/"/g, '""')}"` : s;
}).join(';')).join('\n') + '\n';
const hour = (h) => new Date(Date.UTC(2024, 0, 1) + h * 3600e3).toISOString();
const statuses = ['Draft', 'In Review', 'Open', 'Released'];
const orders = [['id', 'company_id', 'number', 'orderDate', 'postingDate', 'vendorId', 'vendorNumber', 'vendorName',
  'currencyCode', 'purchaser', 'requestedReceiptDate', 'totalAmountExcludingTax', 'totalTaxAmount',
  'totalAmountIncludingTax', 'status', 'lastModifiedDateTime']];
const lines = [['id', 'document_id', 'sequence', 'itemId', 'lineType', 'lineObjectNumber', 'description',
  'unitOfMeasureCode', 'quantity', 'directUnitCost', 'amountExcludingTax', 'receivedQuantity']];
for (let i = 0; i < ORDERS; i++) {
  const v = i % vendors.length;
  let net = 0;
  for (let l = 0; l < 2; l++) {
    const qty = 1 + ((i + l) % 4);
    const cost = (10 + i + l * 0.25).toFixed(2);
    const amount = (qty * Number(cost)).toFixed(2);
    net += Number(amount);
    lines.push([uuid('b', i * 10 + l), uuid('a', i), (l + 1) * 10000, uuid('d', l + 1), 'Item',
      `${1000 + l}`, `Item ${l + 1} of order ${i}`, 'PCS', qty, cost, amount, 0]);
  }
  const tax = (net * 0.25).toFixed(2);
  orders.push([uuid('a', i), COMPANY, `106${String(i).padStart(3, '0')}`, hour(i).slice(0, 10),
    hour(i).slice(0, 10), uuid('e', v), vendors[v][0], vendors[v][1], 'USD', 'JSMITH',
    '2024-03-01', net.toFixed(2), tax, (net + Number(tax)).toFixed(2), statuses[i % 4], hour(i)]);
}
fs.mkdirSync(dir, { recursive: true });
fs.writeFileSync(path.join(dir, 'bc-companies.csv'), csv([['id', 'name'], [COMPANY, 'CRONUS USA, Inc.']]));
fs.writeFileSync(path.join(dir, 'bc-purchaseOrders.csv'), csv(orders));
fs.writeFileSync(path.join(dir, 'bc-purchaseOrderLines.csv'), csv(lines));
fs.writeFileSync(path.join(dir, 'bc-vendors.csv'), csv([['id', 'company_id', 'number', 'displayName', 'email',
  'phoneNumber', 'taxRegistrationNumber', 'currencyCode', 'country', 'blocked', 'lastModifiedDateTime'],
  ...vendors.map(([n, name], v) => [uuid('e', v), COMPANY, n, name, `ap${v}@example.com`, '555-0100', `TX${n}`,
    'USD', 'US', v === 3 ? 'All' : ' ', hour(v)])]));
