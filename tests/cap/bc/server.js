// CAP's own server, plus what Business Central has around its API: an Entra
// ID token endpoint (OAuth 2.0 client credentials) and bearer checks on the
// API, what the system fills on create, and a log of the requests the API
// got (GET /_requests) for tests.
const cds = require('@sap/cds');
const express = require('express');

const CLIENT_ID = 'cap-client';
const CLIENT_SECRET = 'cap-secret';
const tokens = new Set();
const requests = [];
let seq = 0;

cds.on('bootstrap', (app) => {
  app.post('/:tenant/oauth2/v2.0/token', express.urlencoded({ extended: false }), (req, res) => {
    const b = req.body || {};
    if (b.grant_type !== 'client_credentials' || b.client_id !== CLIENT_ID || b.client_secret !== CLIENT_SECRET) {
      return res.status(401).json({ error: 'invalid_client', error_description: 'AADSTS7000215: Invalid client secret provided.' });
    }
    const token = `cap-token-${++seq}`;
    tokens.add(token);
    res.json({ token_type: 'Bearer', expires_in: 3599, access_token: token });
  });
  app.get('/_requests', (_req, res) => res.json(requests));
  app.use('/v2.0', (req, res, next) => {
    requests.push({ method: req.method, url: req.originalUrl, headers: req.headers });
    const auth = req.headers.authorization || '';
    if (!auth.startsWith('Bearer ') || !tokens.has(auth.slice(7))) {
      return res.status(401).json({ error: { code: 'Authentication_InvalidCredentials', message: 'The credentials provided are incorrect' } });
    }
    delete req.headers.authorization;
    next();
  });
});

// What Business Central fills on create and update: the number from its
// number series, status Draft, the vendor's number and name, line sequence
// numbers and amounts, totals (tax 25 %), and the last modification time.
cds.on('served', ({ APIV2: srv }) => {
  let number = 106900;
  const round2 = (n) => Math.round(n * 100) / 100;
  srv.before('CREATE', 'purchaseOrders', async (req) => {
    const d = req.data;
    d.number = d.number || String(number++);
    d.status = d.status || 'Draft';
    d.lastModifiedDateTime = new Date().toISOString();
    if (d.vendorId) {
      const v = await SELECT.one.from('APIV2.vendors').where({ id: d.vendorId });
      if (!v) return req.reject(400, `The field vendorId of value '${d.vendorId}' does not exist.`);
      d.vendorNumber = v.number;
      d.vendorName = v.displayName;
    }
    let net = 0;
    (d.purchaseOrderLines || []).forEach((l, i) => {
      l.sequence = l.sequence || (i + 1) * 10000;
      l.amountExcludingTax = round2(Number(l.quantity || 0) * Number(l.directUnitCost || 0));
      l.receivedQuantity = 0;
      net += l.amountExcludingTax;
    });
    d.totalAmountExcludingTax = round2(net);
    d.totalTaxAmount = round2(net * 0.25);
    d.totalAmountIncludingTax = round2(net * 1.25);
  });
  srv.before('UPDATE', 'purchaseOrders', (req) => {
    req.data.lastModifiedDateTime = new Date().toISOString();
  });
});

module.exports = cds.server;
