DROP TABLE prices;
DROP TABLE budgets;
DROP TABLE cost_events;
DROP TABLE runs;
