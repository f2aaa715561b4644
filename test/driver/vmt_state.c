// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_test: the device state (lazily allocated pages), its checksum,
 * self-dirtying, and the migration stream records shared by v1 and v2.
 */

#include <linux/module.h>
#include <linux/version.h>
#include <linux/slab.h>
#include <linux/mm.h>
#include <linux/bitmap.h>
#include <linux/crc32.h>
#include <linux/xxhash.h>
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 12, 0)
#include <linux/unaligned.h>
#else
#include <asm/unaligned.h>
#endif

#include "vmt.h"

static u8 *vmt_zero_buf;	/* one zeroed VMT_PAGE for hashing absent pages */
static u64 vmt_zero_hash;	/* hash of a full zero page */

static inline u64 vmt_mix64(u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

int vmt_state_init(void)
{
	vmt_zero_buf = kzalloc(VMT_PAGE, GFP_KERNEL);
	if (!vmt_zero_buf)
		return -ENOMEM;
	vmt_zero_hash = xxh64(vmt_zero_buf, VMT_PAGE, 0);
	return 0;
}

void vmt_state_exit(void)
{
	kfree(vmt_zero_buf);
}

u64 vmt_npages(u64 state_size)
{
	return DIV_ROUND_UP_ULL(state_size, VMT_PAGE);
}

static u32 vmt_page_len(struct vmt_dev *d, unsigned long p)
{
	u64 start = (u64)p * VMT_PAGE;

	return min_t(u64, VMT_PAGE, d->state_size - start);
}

static struct page *vmt_page_peek(struct vmt_dev *d, unsigned long p)
{
	return xa_load(&d->pages, p);
}

/* Returns the page backing p, allocating a zeroed one if absent. */
static struct page *vmt_page_get(struct vmt_dev *d, unsigned long p)
{
	struct vmt_save *s = d->save;
	struct page *page;
	void *old;

	lockdep_assert_held(&d->lock);

	page = xa_load(&d->pages, p);
	if (page)
		return page;

	/* fail the access rather than invoke the OOM killer or warn */
	page = alloc_page(GFP_KERNEL_ACCOUNT | __GFP_ZERO | __GFP_NORETRY |
			  __GFP_NOWARN);
	if (!page)
		return NULL;
	old = xa_store(&d->pages, p, page, GFP_KERNEL_ACCOUNT);
	if (xa_is_err(old)) {
		__free_page(page);
		return NULL;
	}
	atomic_long_inc(&vmt_live_allocs);
	d->nr_present++;

	/* a pending zero page becomes a pending data page */
	if (s && p < s->npages) {
		if (test_bit(p, s->pend)) {
			s->n_pend_zero--;
			s->n_pend_alloc++;
		}
		if (test_bit(p, s->init)) {
			s->n_init_zero--;
			s->n_init_alloc++;
		}
	}
	return page;
}

/* Frees page p; only while no saving session counts pages. */
static void vmt_page_drop(struct vmt_dev *d, unsigned long p)
{
	struct page *page;

	lockdep_assert_held(&d->lock);
	page = xa_erase(&d->pages, p);
	if (!page)
		return;
	__free_page(page);
	atomic_long_dec(&vmt_live_allocs);
	d->nr_present--;
}

void vmt_state_free_all(struct vmt_dev *d)
{
	struct page *page;
	unsigned long p;

	xa_for_each(&d->pages, p, page) {
		xa_erase(&d->pages, p);
		__free_page(page);
		atomic_long_dec(&vmt_live_allocs);
	}
	d->nr_present = 0;
}

static void vmt_mark_dirty(struct vmt_dev *d, unsigned long p)
{
	struct vmt_save *s = d->save;

	if (!s || p >= s->npages)
		return;
	if (__test_and_set_bit(p, s->pend))
		return;
	if (vmt_page_peek(d, p))
		s->n_pend_alloc++;
	else
		s->n_pend_zero++;
}

int vmt_state_resize(struct vmt_dev *d, u64 new_size)
{
	u64 old_pages = vmt_npages(d->state_size);
	u64 new_pages = vmt_npages(new_size);
	struct page *page;
	unsigned long p;

	lockdep_assert_held(&d->lock);
	if (d->open || d->save)
		return -EBUSY;

	for (p = new_pages; p < old_pages; p++)
		vmt_page_drop(d, p);
	/* bytes past the end of the state stay zero */
	if (new_size % VMT_PAGE) {
		page = vmt_page_peek(d, new_pages - 1);
		if (page)
			memset(page_address(page) + new_size % VMT_PAGE, 0,
			       VMT_PAGE - new_size % VMT_PAGE);
	}
	d->state_size = new_size;
	d->dirty_cursor = 0;
	d->generation++;
	return 0;
}

u64 vmt_state_checksum(struct vmt_dev *d)
{
	u64 npages = vmt_npages(d->state_size);
	u64 h = vmt_mix64(d->state_size ^ 0x564d54317465737aULL);
	unsigned long p;

	lockdep_assert_held(&d->lock);

	for (p = 0; p < npages; p++) {
		struct page *page = vmt_page_peek(d, p);
		u32 len = vmt_page_len(d, p);
		u64 ph;

		if (page)
			ph = xxh64(page_address(page), len, 0);
		else if (len == VMT_PAGE)
			ph = vmt_zero_hash;
		else
			ph = xxh64(vmt_zero_buf, len, 0);
		h = vmt_mix64(h ^ ph) + p;
		if (!(p & 1023))
			cond_resched();
	}
	return h;
}

/*
 * Fills the whole state from the seed so that two devices of the same size
 * mutated with the same seed hold the same bytes; seed 0 zeroes the state.
 */
int vmt_state_mutate(struct vmt_dev *d, u64 seed)
{
	u64 npages = vmt_npages(d->state_size);
	struct vmt_save *s = d->save;
	unsigned long p;

	lockdep_assert_held(&d->lock);
	vmt_count(d, VMT_C_MUTATES);
	d->generation++;

	if (!seed) {
		vmt_state_free_all(d);
		if (s) {
			bitmap_fill(s->pend, s->npages);
			s->n_pend_alloc = 0;
			s->n_pend_zero = s->npages;
			s->n_init_alloc = 0;
			s->n_init_zero = bitmap_weight(s->init, s->npages);
		}
		return 0;
	}

	for (p = 0; p < npages; p++) {
		struct page *page = vmt_page_get(d, p);
		u32 len = vmt_page_len(d, p);
		u64 *w;
		u32 i;

		if (!page)
			return -ENOMEM;
		w = page_address(page);
		for (i = 0; i < VMT_PAGE / 8; i++)
			w[i] = cpu_to_le64(vmt_mix64(seed ^ (((u64)p * (VMT_PAGE / 8) + i) *
						     0x9e3779b97f4a7c15ULL)));
		if (len < VMT_PAGE)
			memset((u8 *)w + len, 0, VMT_PAGE - len);
		vmt_mark_dirty(d, p);
		if (!(p & 255))
			cond_resched();
	}
	return 0;
}

/* The device advances its own state only in a running state while open. */
bool vmt_dev_running(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	if (!d->open)
		return false;
	if (vmt_kind_is_v1(d->kind))
		return vmt_v1_running(d);
	if (d->kind == VMT_KIND_V2)
		return vmt_v2_running(d);
	return true;
}

static void vmt_dirty_tick(struct vmt_dev *d)
{
	u64 n = DIV_ROUND_UP(d->dirty_rate, VMT_DIRTY_TICK_HZ);
	u64 seed = vmt_mix64(++d->generation);

	if (!d->state_size)
		return;
	n = min_t(u64, n, d->state_size);
	vmt_count(d, VMT_C_DIRTY_TICKS);
	vmt_count_add(d, VMT_C_DIRTY_BYTES, n);

	while (n) {
		unsigned long p = d->dirty_cursor / VMT_PAGE;
		u32 off = d->dirty_cursor % VMT_PAGE;
		u32 len = min_t(u64, n, vmt_page_len(d, p) - off);
		struct page *page = vmt_page_get(d, p);
		u8 *b;
		u32 i;

		if (!page)
			return;	/* out of memory: the device just idles */
		b = page_address(page) + off;
		for (i = 0; i < len; i++)
			b[i] = (u8)(vmt_mix64(seed + d->dirty_cursor + i) | 1);
		vmt_mark_dirty(d, p);
		n -= len;
		d->dirty_cursor += len;
		if (d->dirty_cursor >= d->state_size)
			d->dirty_cursor = 0;
	}
}

void vmt_dirty_work_fn(struct work_struct *work)
{
	struct vmt_dev *d = container_of(to_delayed_work(work), struct vmt_dev,
					 dirty_work);
	bool rearm;

	mutex_lock(&d->lock);
	if (d->dirty_rate && vmt_dev_running(d)) {
		vmt_dirty_tick(d);
		if (d->kind == VMT_KIND_V2)
			vmt_v2_wake(d);
	}
	rearm = d->open && d->dirty_rate;
	mutex_unlock(&d->lock);
	if (rearm)
		schedule_delayed_work(&d->dirty_work,
				      max(1, HZ / VMT_DIRTY_TICK_HZ));
}

void vmt_dirty_kick(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	if (d->open && d->dirty_rate)
		mod_delayed_work(system_wq, &d->dirty_work,
				 max(1, HZ / VMT_DIRTY_TICK_HZ));
}

/* --- saving --------------------------------------------------------- */

int vmt_save_start(struct vmt_dev *d, bool stopped, u16 rec_flags)
{
	u64 npages = vmt_npages(d->state_size);
	size_t bytes = BITS_TO_LONGS(max_t(u64, npages, 1)) * sizeof(long);
	struct vmt_save *s;

	lockdep_assert_held(&d->lock);
	if (d->save)
		return -EBUSY;

	s = vmt_kzalloc(sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->pend = vmt_kvzalloc(bytes);
	s->init = vmt_kvzalloc(bytes);
	if (!s->pend || !s->init) {
		vmt_kvfree(s->pend);
		vmt_kvfree(s->init);
		vmt_kfree(s);
		return -ENOMEM;
	}
	s->npages = npages;
	bitmap_fill(s->pend, npages);
	bitmap_fill(s->init, npages);
	s->n_pend_alloc = d->nr_present;
	s->n_init_alloc = d->nr_present;
	s->n_pend_zero = npages - d->nr_present;
	s->n_init_zero = npages - d->nr_present;
	s->stopped = stopped;
	s->rec_flags = rec_flags;
	d->save = s;
	return 0;
}

void vmt_save_end(struct vmt_dev *d)
{
	struct vmt_save *s = d->save;

	lockdep_assert_held(&d->lock);
	if (!s)
		return;
	d->save = NULL;
	vmt_kvfree(s->pend);
	vmt_kvfree(s->init);
	vmt_kfree(s);
}

static unsigned long vmt_save_next(struct vmt_save *s)
{
	unsigned long p;

	if (!s->n_pend_alloc && !s->n_pend_zero)
		return ULONG_MAX;
	p = find_next_bit(s->pend, s->npages, s->scan);
	if (p >= s->npages)
		p = find_first_bit(s->pend, s->npages);
	if (p >= s->npages)
		return ULONG_MAX;
	s->scan = p + 1;
	return p;
}

/* Takes page p out of the pending sets: it is being sent now. */
static void vmt_save_claim(struct vmt_dev *d, unsigned long p)
{
	struct vmt_save *s = d->save;
	bool present = vmt_page_peek(d, p);

	__clear_bit(p, s->pend);
	if (present)
		s->n_pend_alloc--;
	else
		s->n_pend_zero--;
	s->part_init = __test_and_clear_bit(p, s->init);
	if (s->part_init) {
		if (present)
			s->n_init_alloc--;
		else
			s->n_init_zero--;
	}
	s->part_active = true;
	s->part_page = p;
	s->part_off = 0;
}

static bool vmt_save_drained(struct vmt_save *s)
{
	return !s->part_active && !s->n_pend_alloc && !s->n_pend_zero;
}

/*
 * Builds the next record into buf (at most cap bytes). Returns its length,
 * 0 when there is nothing to send now, or -errno.
 */
ssize_t vmt_save_build(struct vmt_dev *d, u8 *buf, size_t cap, bool *rec_init)
{
	struct vmt_save *s = d->save;
	size_t pos = VMT_REC_HDR, ent = 0;
	u32 nents = 0, ent_kind = 0, ent_len = 0;
	unsigned long iter = 0;
	u64 ent_end = 0;
	bool any_init = !s->first_sent;
	u16 flags;
	u32 crc;

	lockdep_assert_held(&d->lock);
	if (s->last_sent)
		return 0;
	if (cap < VMT_REC_HDR + VMT_REC_ENT + 1)
		return -EINVAL;

	for (;;) {
		unsigned long p;
		struct page *page;
		u32 plen, off, kind, n;
		u64 abs;

		if (!s->part_active) {
			p = vmt_save_next(s);
			if (p == ULONG_MAX)
				break;
			vmt_save_claim(d, p);
		}
		p = s->part_page;
		off = s->part_off;
		plen = vmt_page_len(d, p);
		page = vmt_page_peek(d, p);
		kind = page ? VMT_ENT_DATA : VMT_ENT_ZERO;
		abs = (u64)p * VMT_PAGE + off;

		if (!nents || ent_kind != kind || ent_end != abs ||
		    ent_len > VMT_ENT_MAX_LEN - VMT_PAGE) {
			if (pos + VMT_REC_ENT + (kind == VMT_ENT_DATA) > cap)
				break;
			ent = pos;
			put_unaligned_le64(abs, buf + ent);
			put_unaligned_le32(0, buf + ent + 8);
			put_unaligned_le32(kind, buf + ent + 12);
			pos += VMT_REC_ENT;
			nents++;
			ent_kind = kind;
			ent_len = 0;
		}
		n = plen - off;
		if (kind == VMT_ENT_DATA) {
			n = min_t(size_t, n, cap - pos);
			memcpy(buf + pos, page_address(page) + off, n);
			pos += n;
		}
		ent_len += n;
		ent_end = abs + n;
		put_unaligned_le32(ent_len, buf + ent + 8);
		any_init |= s->part_init;
		if (off + n == plen) {
			s->part_active = false;
		} else {
			s->part_off = off + n;
			break;	/* record full */
		}
		if (!(++iter & 1023))
			cond_resched();
	}

	flags = s->rec_flags;
	if (s->stopped && vmt_save_drained(s))
		flags |= VMT_REC_LAST;
	if (!nents && s->first_sent && !(flags & VMT_REC_LAST))
		return 0;

	put_unaligned_le32(VMT_REC_MAGIC, buf + 0);
	put_unaligned_le16(VMT_REC_VERSION, buf + 4);
	put_unaligned_le16(flags, buf + 6);
	put_unaligned_le32(s->seq, buf + 8);
	put_unaligned_le32(pos, buf + 12);
	put_unaligned_le64(d->state_size, buf + 16);
	put_unaligned_le32(0, buf + 24);
	put_unaligned_le32(nents, buf + 28);
	crc = crc32_le(~0u, buf, pos) ^ ~0u;
	put_unaligned_le32(crc, buf + 24);

	s->seq++;
	s->first_sent = true;
	if (flags & VMT_REC_LAST)
		s->last_sent = true;
	if (rec_init)
		*rec_init = any_init;
	vmt_count(d, VMT_C_RECORDS_SAVED);
	return pos;
}

static u64 vmt_est(struct vmt_dev *d, unsigned long *bm, unsigned long nalloc,
		   unsigned long nzero)
{
	u64 npages = vmt_npages(d->state_size);
	u64 bytes = (u64)nalloc * VMT_PAGE + (u64)nzero * VMT_REC_ENT;
	u32 tail = d->state_size % VMT_PAGE;

	/* the last page is short */
	if (tail && npages && test_bit(npages - 1, bm) &&
	    vmt_page_peek(d, npages - 1))
		bytes -= VMT_PAGE - tail;
	return bytes;
}

/* Estimates of the bytes still to come, split as VFIO_MIG_GET_PRECOPY_INFO. */
void vmt_save_estimate(struct vmt_dev *d, u64 *init_bytes, u64 *dirty_bytes)
{
	struct vmt_save *s = d->save;
	u64 pend, init;

	lockdep_assert_held(&d->lock);
	pend = vmt_est(d, s->pend, s->n_pend_alloc, s->n_pend_zero);
	init = vmt_est(d, s->init, s->n_init_alloc, s->n_init_zero);
	*init_bytes = init;
	*dirty_bytes = pend - init;
	if (s->part_active) {
		u32 rest = vmt_page_len(d, s->part_page) - s->part_off;

		if (s->part_init)
			*init_bytes += rest;
		else
			*dirty_bytes += rest;
	}
	if (!s->first_sent)
		*init_bytes += VMT_REC_HDR;
}

/* v1 pending_bytes: > 0 exactly while more records will come. */
u64 vmt_save_pending(struct vmt_dev *d)
{
	struct vmt_save *s = d->save;
	u64 init, dirty;

	if (!s || s->last_sent)
		return 0;
	vmt_save_estimate(d, &init, &dirty);
	if (s->stopped)
		return init + dirty + VMT_REC_HDR;
	return init + dirty;
}

/* Estimated stream size of a full stop-copy from now. */
u64 vmt_full_estimate(struct vmt_dev *d)
{
	u64 npages = vmt_npages(d->state_size);

	lockdep_assert_held(&d->lock);
	if (d->save)
		return vmt_save_pending(d) + (d->save->stopped ? 0 : VMT_REC_HDR);
	return (u64)d->nr_present * VMT_PAGE +
	       (npages - d->nr_present) * VMT_REC_ENT + 2 * VMT_REC_HDR;
}

/* --- resuming ------------------------------------------------------- */

void vmt_load_start(struct vmt_dev *d, u16 rec_flags)
{
	lockdep_assert_held(&d->lock);
	d->load.active = true;
	d->load.done = false;
	d->load.seq = 0;
	d->load.rec_flags = rec_flags;
}

void vmt_load_end(struct vmt_dev *d)
{
	lockdep_assert_held(&d->lock);
	d->load.active = false;
}

static bool vmt_all_zero(const u8 *b, size_t n)
{
	return !b[0] && !memcmp(b, b + 1, n - 1);
}

static int vmt_state_write(struct vmt_dev *d, u64 off, const u8 *src, u32 len)
{
	while (len) {
		unsigned long p = off / VMT_PAGE;
		u32 po = off % VMT_PAGE;
		u32 n = min_t(u32, len, VMT_PAGE - po);
		struct page *page = vmt_page_peek(d, p);

		if (src) {
			if (page || !vmt_all_zero(src, n)) {
				page = vmt_page_get(d, p);
				if (!page)
					return -ENOMEM;
				memcpy(page_address(page) + po, src, n);
			}
			src += n;
		} else if (page) {
			if (n == VMT_PAGE)
				vmt_page_drop(d, p);
			else
				memset(page_address(page) + po, 0, n);
		}
		off += n;
		len -= n;
	}
	return 0;
}

/*
 * Checks one record and applies it. The whole record is validated before
 * any byte reaches the device state, so buf must be private to the kernel
 * (not a user mapping). Returns -EINVAL for a bad record.
 */
int vmt_load_record(struct vmt_dev *d, const u8 *buf, size_t len)
{
	struct vmt_load *ld = &d->load;
	u32 nents, i, crc;
	u16 flags;
	size_t pos;
	int ret;

	lockdep_assert_held(&d->lock);
	if (!ld->active || ld->done || len < VMT_REC_HDR)
		goto bad;
	flags = get_unaligned_le16(buf + 6);
	if (get_unaligned_le32(buf) != VMT_REC_MAGIC ||
	    get_unaligned_le16(buf + 4) != VMT_REC_VERSION ||
	    get_unaligned_le32(buf + 12) != len ||
	    (flags & ~VMT_REC_FLAGS) ||
	    (flags & VMT_REC_V2) != ld->rec_flags ||
	    get_unaligned_le32(buf + 8) != ld->seq ||
	    get_unaligned_le64(buf + 16) != d->state_size)
		goto bad;

	/* crc over the record with its crc field zeroed */
	crc = crc32_le(~0u, buf, 24);
	crc = crc32_le(crc, (const u8 *)"\0\0\0\0", 4);
	crc = crc32_le(crc, buf + 28, len - 28) ^ ~0u;
	if (crc != get_unaligned_le32(buf + 24))
		goto bad;

	nents = get_unaligned_le32(buf + 28);
	for (pos = VMT_REC_HDR, i = 0; i < nents; i++) {
		u64 off, end;
		u32 elen, kind;

		if (len - pos < VMT_REC_ENT)
			goto bad;
		off = get_unaligned_le64(buf + pos);
		elen = get_unaligned_le32(buf + pos + 8);
		kind = get_unaligned_le32(buf + pos + 12);
		pos += VMT_REC_ENT;
		if (!elen || check_add_overflow(off, (u64)elen, &end) ||
		    end > d->state_size)
			goto bad;
		if (kind == VMT_ENT_DATA) {
			if (len - pos < elen)
				goto bad;
			pos += elen;
		} else if (kind != VMT_ENT_ZERO) {
			goto bad;
		}
	}
	if (pos != len)
		goto bad;

	ret = 0;
	for (pos = VMT_REC_HDR, i = 0; i < nents && !ret; i++) {
		u64 off = get_unaligned_le64(buf + pos);
		u32 elen = get_unaligned_le32(buf + pos + 8);
		u32 kind = get_unaligned_le32(buf + pos + 12);

		pos += VMT_REC_ENT;
		if (kind == VMT_ENT_DATA) {
			ret = vmt_state_write(d, off, buf + pos, elen);
			pos += elen;
		} else {
			ret = vmt_state_write(d, off, NULL, elen);
		}
	}
	if (ret)
		return ret;

	ld->seq++;
	if (flags & VMT_REC_LAST)
		ld->done = true;
	d->generation++;
	vmt_count(d, VMT_C_RECORDS_LOADED);
	return 0;
bad:
	vmt_count(d, VMT_C_RECORDS_REJECTED);
	return -EINVAL;
}
