/** An Int32Array or Float64Array that grows by doubling and can be cut back (undo of appends). */
export class GrowableInt32 {
  data: Int32Array;
  length = 0;

  constructor(initial = 1024) {
    this.data = new Int32Array(initial);
  }

  push(v: number): number {
    if (this.length === this.data.length) {
      const next = new Int32Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length] = v;
    return this.length++;
  }

  get byteLength(): number {
    return this.data.byteLength;
  }
}

export class GrowableFloat64 {
  data: Float64Array;
  length = 0;

  constructor(initial = 1024) {
    this.data = new Float64Array(initial);
  }

  push(v: number): number {
    if (this.length === this.data.length) {
      const next = new Float64Array(this.data.length * 2);
      next.set(this.data);
      this.data = next;
    }
    this.data[this.length] = v;
    return this.length++;
  }

  get byteLength(): number {
    return this.data.byteLength;
  }
}
