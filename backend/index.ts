/**
 * `outrider/backend`: what a Node backend (Express, fastify, plain node:http) needs to talk to
 * Outrider, or to GitLab Workhorse: the response headers that hand work over, the checks for
 * upload pre-authorization and signed upload fields, and the shared secret. node: builtins only.
 */
export { OutriderSecretError, OutriderVerificationError, type SecretCode, type VerificationCode } from '../protocol/errors.js';
export { ISSUER, signJwt, type VerifyJwtOptions, verifyJwt } from '../protocol/jwt.js';
export { loadSecret, SECRET_BYTES } from '../protocol/secret.js';
export {
  DETECT_CONTENT_TYPE,
  DETECT_CONTENT_TYPE_HEADER,
  type OutriderAnswer,
  type OutriderHeader,
  respond,
  type ScaledImageOptions,
  SEND_DATA_HEADER,
  SENDFILE_HEADER,
  type SendUrlOptions,
  sendFile,
  sendScaledImage,
  sendUrl,
} from './send-data.js';
export {
  API_CONTENT_TYPE,
  API_REQUEST_HEADER,
  type AuthorizeOptions,
  authorizeResponse,
  type FormFields,
  MULTIPART_FIELDS_HEADER,
  type ReadFieldsOptions,
  type RemoteObject,
  type RequestBody,
  type RequestHeaders,
  readFields,
  UPLOAD_HASHES,
  type UploadedFile,
  type UploadHash,
  type VerifyApiRequestOptions,
  type VerifyUploadFieldsOptions,
  verifyApiRequest,
  verifyUploadFields,
} from './upload.js';
