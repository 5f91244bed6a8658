-- A token that changes with every change to pools or policies, in the same transaction. Placement keeps pools and
-- policies in memory and reloads them when the token it read differs; a random token (not a counter) means a
-- rolled-back change can never make a stale copy look current again.
CREATE TABLE catalog_token (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    token INTEGER NOT NULL
);
INSERT INTO catalog_token (id, token) VALUES (1, random());
CREATE TRIGGER pools_insert_token AFTER INSERT ON pools BEGIN UPDATE catalog_token SET token = random(); END;
CREATE TRIGGER pools_update_token AFTER UPDATE ON pools BEGIN UPDATE catalog_token SET token = random(); END;
CREATE TRIGGER pools_delete_token AFTER DELETE ON pools BEGIN UPDATE catalog_token SET token = random(); END;
CREATE TRIGGER policies_insert_token AFTER INSERT ON policies BEGIN UPDATE catalog_token SET token = random(); END;
CREATE TRIGGER policies_update_token AFTER UPDATE ON policies BEGIN UPDATE catalog_token SET token = random(); END;
CREATE TRIGGER policies_delete_token AFTER DELETE ON policies BEGIN UPDATE catalog_token SET token = random(); END;
