/**
 * Loaded before every test file (vitest.config.ts setupFiles): the npm undici claims the process's
 * default dispatcher before anything imports node:http. On Node 24, importing node:http from an ES
 * module loads Node's own copy of undici, which makes itself the default; npm undici's request()
 * then goes through that copy, which does not know npm undici's FormData and sends no body
 * (nodejs/node#59012). Outrider itself never uses the default dispatcher.
 */
import 'undici';
