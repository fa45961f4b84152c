"""Provider batch APIs (OpenAI, Azure OpenAI): half the price, a day's patience."""
