// SPDX-License-Identifier: GPL-2.0-only
/*
 * vfio_mig_edu: the edu device itself: waiting for it to be idle, its DMA
 * through an IOVA of our own in the user's IOMMU domain, and reading and
 * writing its state (registers and the internal buffer).
 */

#include <linux/io.h>
#include <linux/iommu.h>
#include <linux/delay.h>
#include <linux/jiffies.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/pci.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "edu.h"

/* the DMA timer of edu.c fires after 100 ms of QEMU's virtual clock */
#define EDU_WAIT_MS		3000
/* where the search for a free IOVA of our own starts, going down */
#define EDU_IOVA_TOP		(EDU_DMA_LIMIT - PAGE_SIZE)
#define EDU_IOVA_TRIES		4096

static u32 edu_rd32(struct edu_dev *e, u32 reg)
{
	return ioread32(e->bar + reg);
}

static void edu_wr32(struct edu_dev *e, u32 reg, u32 val)
{
	iowrite32(val, e->bar + reg);
}

static u64 edu_rd64(struct edu_dev *e, u32 reg)
{
	return readq(e->bar + reg);
}

static void edu_wr64(struct edu_dev *e, u32 reg, u64 val)
{
	writeq(val, e->bar + reg);
}

/* Waits until no factorial is computing and no DMA is in flight. */
static int edu_wait_idle(struct edu_dev *e)
{
	unsigned long end = jiffies + msecs_to_jiffies(EDU_WAIT_MS);

	for (;;) {
		u32 status = edu_rd32(e, EDU_REG_STATUS);
		u64 cmd = edu_rd64(e, EDU_REG_DMA_CMD);

		if (status == ~0U)
			return -EIO;	/* memory decoding off, or gone */
		if (!(status & EDU_STATUS_COMPUTING) && !(cmd & EDU_CMD_RUN))
			return 0;
		if (time_after(jiffies, end))
			return -ETIMEDOUT;
		usleep_range(2000, 4000);
	}
}

/*
 * While VFIO holds the device, its IOMMU domain is the user's: every IOVA in
 * it is the user's to map. For the driver's own DMA we borrow a page-sized
 * IOVA below the device's 28-bit DMA limit that is free in that domain, map
 * our page there only while the device is stopped (the user cannot start a
 * DMA then), and unmap it at once. See README.md.
 */
static int edu_iova_map(struct edu_dev *e, struct page *page,
			struct iommu_domain **pdom, unsigned long *piova)
{
	struct iommu_domain *dom;
	unsigned long iova = EDU_IOVA_TOP;
	int i, ret = -ENOSPC;

	dom = iommu_get_domain_for_dev(&e->core.pdev->dev);
	if (!dom)
		return -ENODEV;
	for (i = 0; i < EDU_IOVA_TRIES; i++, iova -= PAGE_SIZE) {
		if (iommu_iova_to_phys(dom, iova))
			continue;
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 3, 0)
		ret = iommu_map(dom, iova, page_to_phys(page), PAGE_SIZE,
				IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE,
				GFP_KERNEL);
#else
		ret = iommu_map(dom, iova, page_to_phys(page), PAGE_SIZE,
				IOMMU_READ | IOMMU_WRITE | IOMMU_CACHE);
#endif
		if (!ret) {
			*pdom = dom;
			*piova = iova;
			return 0;
		}
		/* the user mapped it meanwhile: try the next one */
	}
	return ret;
}

static void edu_iova_unmap(struct iommu_domain *dom, unsigned long iova)
{
	if (iommu_unmap(dom, iova, PAGE_SIZE) != PAGE_SIZE)
		pr_warn(EDU_NAME ": unmapping our IOVA %#lx failed\n", iova);
}

/* One DMA of the device, started and waited for. */
static int edu_dma(struct edu_dev *e, u64 src, u64 dst, u64 cnt, u64 cmd)
{
	edu_wr64(e, EDU_REG_DMA_SRC, src);
	edu_wr64(e, EDU_REG_DMA_DST, dst);
	edu_wr64(e, EDU_REG_DMA_CNT, cnt);
	edu_wr64(e, EDU_REG_DMA_CMD, cmd | EDU_CMD_RUN);
	return edu_wait_idle(e);
}

/* A page of ours, mapped at an IOVA of ours for the time of one operation. */
struct edu_dma_page {
	struct page *page;
	struct iommu_domain *dom;
	unsigned long iova;
};

static int edu_dma_page_get(struct edu_dev *e, struct edu_dma_page *dp)
{
	int ret;

	dp->page = alloc_page(GFP_KERNEL | __GFP_ZERO);
	if (!dp->page)
		return -ENOMEM;
	ret = edu_iova_map(e, dp->page, &dp->dom, &dp->iova);
	if (ret)
		__free_page(dp->page);
	return ret;
}

static void edu_dma_page_put(struct edu_dma_page *dp)
{
	edu_iova_unmap(dp->dom, dp->iova);
	__free_page(dp->page);
}

/*
 * Puts back the DMA registers. The command register only takes writes that
 * start a DMA, so a command other than 0 comes back through a DMA of one
 * byte with that command: to RAM it writes our page, from RAM it writes the
 * buffer's first byte with the value our page holds for it (the buffer's
 * own). Its interrupt, if the command asks for one, is acknowledged unless
 * the saved status had it.
 */
static int edu_restore_dma_regs(struct edu_dev *e, struct edu_dma_page *dp,
				const struct edu_regs *r)
{
	u64 cmd = le64_to_cpu(r->dma_cmd) & ~(u64)EDU_CMD_RUN;
	int ret;

	if (cmd) {
		if (cmd & EDU_CMD_TO_RAM)
			ret = edu_dma(e, EDU_BUF_ADDR, dp->iova + PAGE_SIZE - 1,
				      1, cmd);
		else
			ret = edu_dma(e, dp->iova, EDU_BUF_ADDR, 1, cmd);
		if (ret)
			return ret;
		if ((cmd & EDU_CMD_IRQ) &&
		    !(le32_to_cpu(r->irq_status) & EDU_IRQ_DMA))
			edu_wr32(e, EDU_REG_IRQ_ACK, EDU_IRQ_DMA);
	}
	edu_wr64(e, EDU_REG_DMA_SRC, le64_to_cpu(r->dma_src));
	edu_wr64(e, EDU_REG_DMA_DST, le64_to_cpu(r->dma_dst));
	edu_wr64(e, EDU_REG_DMA_CNT, le64_to_cpu(r->dma_cnt));
	return 0;
}

/*
 * The factorial register can only be given an n, of which the device then
 * computes n! (mod 2^32). Every value it can hold at rest is such a result;
 * from 34 on, n! mod 2^32 is 0. The smallest n that gives @fact, or -1.
 */
static int edu_fact_preimage(u32 fact)
{
	u32 f = 1;
	int n;

	for (n = 0; n <= 34; n++) {
		if (n)
			f *= n;
		if (f == fact)
			return n;
	}
	return -1;
}

/*
 * The user may have left memory decoding or bus mastering off (edu's DMA
 * goes nowhere without it): on for our accesses, as the user had it after.
 */
static u16 edu_enable(struct edu_dev *e)
{
	u16 cmd;

	pci_read_config_word(e->core.pdev, PCI_COMMAND, &cmd);
	pci_write_config_word(e->core.pdev, PCI_COMMAND,
			      cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER);
	return cmd;
}

static void edu_restore_command(struct edu_dev *e, u16 cmd)
{
	pci_write_config_word(e->core.pdev, PCI_COMMAND, cmd);
}

static int edu_capture(struct edu_dev *e, struct edu_payload *p)
{
	struct edu_regs *r = &p->regs;
	struct edu_dma_page dp;
	int ret;

	ret = edu_wait_idle(e);
	if (ret)
		return ret;
	r->fact = cpu_to_le32(edu_rd32(e, EDU_REG_FACT));
	r->liveness = cpu_to_le32(edu_rd32(e, EDU_REG_LIVENESS));
	r->status = cpu_to_le32(edu_rd32(e, EDU_REG_STATUS) &
				EDU_STATUS_IRQFACT);
	r->irq_status = cpu_to_le32(edu_rd32(e, EDU_REG_IRQ_STATUS));
	r->dma_src = cpu_to_le64(edu_rd64(e, EDU_REG_DMA_SRC));
	r->dma_dst = cpu_to_le64(edu_rd64(e, EDU_REG_DMA_DST));
	r->dma_cnt = cpu_to_le64(edu_rd64(e, EDU_REG_DMA_CNT));
	r->dma_cmd = cpu_to_le64(edu_rd64(e, EDU_REG_DMA_CMD) &
				 ~(u64)EDU_CMD_RUN);

	ret = edu_dma_page_get(e, &dp);
	if (ret)
		return ret;
	ret = edu_dma(e, EDU_BUF_ADDR, dp.iova, EDU_BUF_REACH, EDU_CMD_TO_RAM);
	if (!ret) {
		memcpy(p->buf, page_address(dp.page), EDU_BUF_REACH);
		/* our DMA overwrote the DMA registers: the source gets them back */
		ret = edu_restore_dma_regs(e, &dp, r);
	}
	edu_dma_page_put(&dp);
	return ret;
}

u32 edu_hw_ident(struct edu_dev *e)
{
	u16 cmd = edu_enable(e);
	u32 ident = edu_rd32(e, EDU_REG_IDENT);

	edu_restore_command(e, cmd);
	return ident;
}

int edu_hw_capture(struct edu_dev *e, struct edu_payload *p)
{
	u16 cmd = edu_enable(e);
	int ret = edu_capture(e, p);

	edu_restore_command(e, cmd);
	return ret;
}

static int edu_restore(struct edu_dev *e, const struct edu_payload *p)
{
	const struct edu_regs *r = &p->regs;
	u32 fact = le32_to_cpu(r->fact);
	struct edu_dma_page dp;
	int n, ret;

	n = edu_fact_preimage(fact);
	if (n < 0)
		return -EINVAL;
	ret = edu_wait_idle(e);
	if (ret)
		return ret;

	/* no interrupt for the computation that puts the factorial back */
	edu_wr32(e, EDU_REG_STATUS, 0);
	edu_wr32(e, EDU_REG_FACT, n);
	ret = edu_wait_idle(e);
	if (ret)
		return ret;
	if (edu_rd32(e, EDU_REG_FACT) != fact)
		return -EIO;

	ret = edu_dma_page_get(e, &dp);
	if (ret)
		return ret;
	memcpy(page_address(dp.page), p->buf, EDU_BUF_REACH);
	ret = edu_dma(e, dp.iova, EDU_BUF_ADDR, EDU_BUF_REACH, 0);
	if (!ret)
		ret = edu_restore_dma_regs(e, &dp, r);
	edu_dma_page_put(&dp);
	if (ret)
		return ret;

	edu_wr32(e, EDU_REG_LIVENESS, ~le32_to_cpu(r->liveness));
	edu_wr32(e, EDU_REG_STATUS, le32_to_cpu(r->status) &
		 EDU_STATUS_IRQFACT);
	edu_wr32(e, EDU_REG_IRQ_ACK, ~0U);
	if (r->irq_status)
		edu_wr32(e, EDU_REG_IRQ_RAISE, le32_to_cpu(r->irq_status));
	return 0;
}

int edu_hw_restore(struct edu_dev *e, const struct edu_payload *p)
{
	u16 cmd = edu_enable(e);
	int ret = edu_restore(e, p);

	edu_restore_command(e, cmd);
	return ret;
}

/*
 * A DMA command from the user, seen because BAR0 is trapped: QEMU 7.2 would
 * abort on a range that is not strictly inside the buffer, so the driver
 * refuses it instead.
 */
int edu_hw_check_cmd(struct edu_dev *e, u64 cmd, u64 *ram_dst, u64 *ram_len)
{
	u64 cnt, addr;

	*ram_len = 0;
	if (!(cmd & EDU_CMD_RUN) || (edu_rd64(e, EDU_REG_DMA_CMD) & EDU_CMD_RUN))
		return 0;	/* edu ignores it */
	cnt = edu_rd64(e, EDU_REG_DMA_CNT);
	addr = edu_rd64(e, (cmd & EDU_CMD_TO_RAM) ? EDU_REG_DMA_SRC :
			EDU_REG_DMA_DST);
	if (!cnt || cnt > EDU_BUF_REACH || addr < EDU_BUF_ADDR ||
	    addr - EDU_BUF_ADDR > EDU_BUF_REACH - cnt)
		return -EINVAL;
	if (cmd & EDU_CMD_TO_RAM) {
		/* edu masks its RAM address with its 28-bit DMA mask */
		*ram_dst = edu_rd64(e, EDU_REG_DMA_DST) & (EDU_DMA_LIMIT - 1);
		*ram_len = cnt;
	}
	return 0;
}

/*
 * edu.c has no reset of its own and the device offers none of the PCI
 * resets (no FLR, no PM, on the root bus): a reset puts back the state
 * the device has at power on, everything 0.
 */
int edu_hw_reset(struct edu_dev *e)
{
	struct edu_payload *p;
	int ret;

	p = kzalloc(sizeof(*p), GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	ret = edu_hw_restore(e, p);
	kfree(p);
	return ret;
}
