// Container: a VFIO container (/dev/vfio/vfio), the IOMMU context the groups attach to.
import { native } from './native';
import { VfioError } from './errors';
import { FdHandle, openNode } from './fd-handle';
import { ContainerDma } from './dirty/dma';
import { VFIO_API_VERSION, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU } from './uapi';

/** A VFIO container (/dev/vfio/vfio): the IOMMU context the groups attach to. */
export class Container {
  readonly #handle: FdHandle;
  iommuType: number | null = null;
  #dma: ContainerDma | null = null;

  constructor(path = '/dev/vfio/vfio') {
    const fd = openNode(path, 'is the vfio module loaded?');
    this.#handle = new FdHandle(fd, 'VFIO container');
    try {
      const version = native.getApiVersion(fd);
      if (version !== VFIO_API_VERSION)
        throw new VfioError('ERR_VFIO_API', `VFIO API version ${version}, expected ${VFIO_API_VERSION}`);
    } catch (err) {
      this.close();
      throw err;
    }
  }

  get fd(): number {
    return this.#handle.fd;
  }

  checkExtension(extension: number): number {
    return native.checkExtension(this.fd, extension);
  }

  /** Picks the best type1 IOMMU model the container offers (needs a group attached). */
  setIommu(): number {
    for (const type of [VFIO_TYPE1v2_IOMMU, VFIO_TYPE1_IOMMU]) {
      if (this.checkExtension(type) > 0) {
        native.setIommu(this.fd, type);
        this.iommuType = type;
        return type;
      }
    }
    throw new VfioError('ERR_VFIO_API', 'the VFIO container offers no type1 IOMMU (is vfio_iommu_type1 loaded?)');
  }

  /** DMA mappings and the IOMMU's dirty page tracking (needs an IOMMU set). */
  get dma(): ContainerDma {
    this.#dma ??= new ContainerDma(() => this.fd);
    return this.#dma;
  }

  close(): void {
    if (!this.#handle.closed) this.#dma?.releaseAll();
    this.#handle.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
