// An OpenID provider for the interop test: panva's oidc-provider, configured with Auth0's
// endpoint paths and served over HTTPS with the test's throwaway CA.
//
// Usage: node provider.mjs CONFIG_JSON_FILE
//   {cert, key, redirectUri, clientId, clientSecret, idTokenTtl}
// Prints one JSON line {"port", "issuer"} on stdout when it listens, then serves until killed.
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const options = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));

const server = https.createServer({
  cert: fs.readFileSync(options.cert),
  key: fs.readFileSync(options.key),
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();
const issuer = `https://localhost:${port}/`;

function signingKey(type, params, kid, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, params);
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

const client = {
  client_secret: options.clientSecret,
  redirect_uris: [options.redirectUri],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_post',
};

const provider = new Provider(issuer, {
  clients: [
    { ...client, client_id: options.clientId, id_token_signed_response_alg: 'RS256' },
    { ...client, client_id: `${options.clientId}-ec`, id_token_signed_response_alg: 'ES256' },
  ],
  jwks: {
    keys: [
      signingKey('rsa', { modulusLength: 2048 }, 'interop-rsa', 'RS256'),
      signingKey('ec', { namedCurve: 'P-256' }, 'interop-ec', 'ES256'),
    ],
  },
  // Auth0's endpoint paths.
  routes: {
    authorization: '/authorize',
    token: '/oauth/token',
    userinfo: '/userinfo',
    jwks: '/.well-known/jwks.json',
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  pkce: { required: () => true },
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return { sub, email: `${sub}@example.test`, email_verified: true };
      },
    };
  },
  // Auth0 issues refresh tokens to apps allowed the grant; no offline_access dance needed.
  async issueRefreshToken(ctx, oidcClient) {
    return oidcClient.grantTypeAllowed('refresh_token');
  },
  ttl: {
    IdToken: options.idTokenTtl,
    AccessToken: 600,
    AuthorizationCode: 60,
    Grant: 600,
    Interaction: 600,
    RefreshToken: 600,
    Session: 600,
  },
});
provider.on('server_error', (ctx, error) => console.error('server_error', error));
server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ port, issuer })}\n`);
