/** A camera-like TIFF: the metadata a camera or Photoshop writes, which sharp cannot. Shared by the TIFF tests and the upload route's. */
import type { TiffOptions } from 'sharp';
import { base, SECRETS, tags, withTiffMetadata } from './helpers.js';

export const le = true; // sharp writes little-endian TIFFs

export const LATITUDE: [number, number][] = [
  [51, 1],
  [30, 1],
  [17, 1],
];

/** What a camera or Photoshop puts in a TIFF, which sharp cannot write. */
export const CAMERA = {
  ifd0: [
    tags.ascii(269, 'SecretDocName'),
    tags.ascii(270, 'SecretDescription'),
    tags.ascii(271, 'SecretMakeCo'),
    tags.ascii(272, 'SecretModel9'),
    tags.ascii(285, 'SecretPageName'),
    tags.ascii(305, 'SecretSoftware'),
    tags.ascii(306, '2021:04:05 06:07:08'),
    tags.ascii(315, 'SecretArtist'),
    tags.ascii(316, 'SecretHostComputer'),
    tags.bytes(700, 1, '<x:xmpmeta>SecretXmpCreator</x:xmpmeta>'),
    tags.ascii(33432, 'Copyright Jane Doe'),
    tags.bytes(33723, 7, 'SecretIptcByline'),
    tags.bytes(34377, 1, '8BIM SecretPhotoshopIrb'),
    tags.bytes(37724, 7, 'SecretLayerData'),
    tags.ascii(40000, 'SecretPrivateTag'),
  ],
  exif: [tags.ascii(0xa431, 'SERIAL-98765'), tags.ascii(0x9003, '2021:04:05 06:07:08'), tags.bytes(0x927c, 7, 'SecretMakerNoteBlob')],
  interop: [tags.ascii(0x0001, 'R98'), tags.ascii(0x1000, 'SecretInteropFormat')],
  gps: [tags.ascii(1, 'N'), tags.rationals(le, 2, LATITUDE), tags.bytes(0x1b, 7, 'SecretGpsMethod')],
};

export const ALL_SECRETS = [
  ...SECRETS,
  'SecretDocName',
  'SecretPageName',
  'SecretHostComputer',
  'SecretXmpCreator',
  'SecretIptcByline',
  'SecretPhotoshopIrb',
  'SecretLayerData',
  'SecretPrivateTag',
  'SecretMakerNoteBlob',
  'SecretInteropFormat',
  'SecretGpsMethod',
];

export const latitudeBytes = tags.rationals(le, 2, LATITUDE).value;

export async function cameraTiff(options: TiffOptions = {}): Promise<Buffer> {
  const tiff = await base().tiff(options).withMetadata({ orientation: 6 }).toBuffer();
  return withTiffMetadata(tiff, CAMERA);
}
