import { defineTransform } from 'retrace/transform';

/** Converts an order's amount to USD cents at a fixed rate (a parameter, so what-if replays can change it). */
export default defineTransform({
  name: 'scale-order',
  requirements: { cpu: 0.1, memoryMb: 64 },
  run(input, params) {
    const order = input.json<{ id: number; amount: number; currency: string }>();
    const rate = Number((params.rates as Record<string, number> | undefined)?.[order.currency] ?? 1);
    return { json: { id: order.id, usdCents: Math.round(order.amount * rate * 100) } };
  },
});
