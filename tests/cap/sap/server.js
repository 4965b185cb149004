// CAP with the OData v2 adapter, plus what an S/4HANA system has around the
// service: basic auth, the client (`sap-client`, else the system's default
// client 000), and CSRF protection of changing requests: a token fetched
// with `x-csrf-token: Fetch` belongs to the session (cookie) of the client
// it was fetched for. GET /_requests lists the requests the service got.
const cds = require('@sap/cds');

const USER = 'SLUICE_INTEGRATION';
const PASSWORD = 'cap-sap-pw';
const DEFAULT_CLIENT = '000';
const tokens = new Map(); // token -> client
const requests = [];
let seq = 0;

cds.on('bootstrap', (app) => {
  app.get('/_requests', (_req, res) => res.json(requests));
  // Runs before the adapter (a plugin, mounted before this file's routes).
  cds.cov2ap.before = (req, res, next) => {
    requests.push({ method: req.method, url: req.originalUrl, headers: req.headers });
    const expected = 'Basic ' + Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
    if (req.headers.authorization !== expected) {
      res.set('www-authenticate', 'Basic realm="SAP NetWeaver Application Server [S4H/100]"');
      return res.status(401).send('Logon failed');
    }
    delete req.headers.authorization;
    const client = req.headers['sap-client'] || DEFAULT_CLIENT;
    if (String(req.headers['x-csrf-token'] || '').toLowerCase() === 'fetch') {
      const token = `csrf-${client}-${++seq}`;
      tokens.set(token, client);
      // Set when the response goes out: the adapter's proxy replaces the
      // headers set before it.
      const writeHead = res.writeHead;
      res.writeHead = function (...args) {
        res.setHeader('x-csrf-token', token);
        res.appendHeader('set-cookie', `SAP_SESSIONID_S4H_${client}=${token}-session; path=/; HttpOnly`);
        return writeHead.apply(this, args);
      };
    } else if (!['GET', 'HEAD', 'OPTIONS'].includes(req.method)) {
      const token = req.headers['x-csrf-token'];
      const cookie = req.headers.cookie || '';
      if (!token || tokens.get(token) !== client || !cookie.includes(`SAP_SESSIONID_S4H_${client}=`)) {
        res.set('x-csrf-token', 'Required');
        return res.status(403).send('CSRF token validation failed');
      }
    }
    next();
  };
});

// What the system fills on create: the order number from its number range,
// the status (01, in process), dates, the user; items inherit the order.
cds.on('served', ({ API_PURCHASEORDER_PROCESS_SRV: srv }) => {
  let number = 4500001000;
  srv.before('CREATE', 'A_PurchaseOrder', (req) => {
    const d = req.data;
    const now = new Date().toISOString();
    d.PurchaseOrder = d.PurchaseOrder || String(number++);
    d.PurchasingProcessingStatus = d.PurchasingProcessingStatus || '01';
    d.CreationDate = d.CreationDate || now.slice(0, 10);
    d.PurchaseOrderDate = d.PurchaseOrderDate || now.slice(0, 10);
    d.CreatedByUser = d.CreatedByUser || USER;
    d.LastChangeDateTime = now;
    for (const i of d.to_PurchaseOrderItem || []) {
      i.PurchaseOrder = d.PurchaseOrder;
      i.DocumentCurrency = i.DocumentCurrency || d.DocumentCurrency;
      i.NetPriceQuantity = i.NetPriceQuantity || 1;
    }
  });
});

module.exports = cds.server;
