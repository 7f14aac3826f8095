// One HS256 implementation for both sides: Outrider signs with the toolkit backends verify with.
export { ISSUER, signJwt, verifyJwt } from '../backend/jwt.js';
