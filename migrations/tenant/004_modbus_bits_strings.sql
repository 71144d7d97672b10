-- Modbus: a single bit of a 16-bit register, and the register length of a string.
ALTER TABLE tag_mappings
    ADD COLUMN modbus_bit integer CHECK (modbus_bit BETWEEN 0 AND 15),
    ADD COLUMN modbus_length integer CHECK (modbus_length BETWEEN 1 AND 125);
