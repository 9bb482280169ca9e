/** What a test reads in a lender's copy of a lease, to see whether the pages there are sealed. */

/** The first bytes of a LUKS header ("LUKS\xba\xbe"), where the userspace path seals a lease. */
export const LUKS_MAGIC = Buffer.from([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);

/** How many 4 KiB pages of `image` between `from` and `to` hold anything but zeros. */
export function writtenPages(image: Buffer, from: number, to: number): number {
  let n = 0;
  for (let page = from; page + 4096 <= to; page += 4096) if (image.subarray(page, page + 4096).some((b) => b !== 0)) n += 1;
  return n;
}
