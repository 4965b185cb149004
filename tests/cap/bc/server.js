// CAP's own server, plus what Business Central has around its API: an Entra
// ID token endpoint (OAuth 2.0 client credentials) and bearer checks on the
// API, and a log of the requests the API got (GET /_requests) for tests.
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

module.exports = cds.server;
