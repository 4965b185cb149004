"""Seeds a Tryton database for the connector tests: a company (EUR), three
suppliers, four goods (two of them in stock), and six purchases of two lines
each (quantities and prices as decimals). Run with the venv's python after `trytond-admin` has
installed `purchase` and `stock`:

    python seed.py CONFIG_FILE DATABASE
"""
import datetime
import sys
from decimal import Decimal

from proteus import Model, config

config_file, database = sys.argv[1], sys.argv[2]
config.set_trytond(database=database, config_file=config_file)

Currency = Model.get('currency.currency')
eur, = Currency.find([('code', '=', 'EUR')]) or [None]
if eur is None:
    eur = Currency(name='Euro', code='EUR', symbol='€', digits=2, rounding=Decimal('0.01'))
    eur.save()

Party = Model.get('party.party')
Company = Model.get('company.company')
company_party = Party(name='Sluice Test Plant')
company_party.save()
company = Company(party=company_party, currency=eur)
company.save()

User = Model.get('res.user')
admin, = User.find([('login', '=', 'admin')])
admin.companies.append(Company(company.id))
admin.company = company
admin.save()
config.get_config()._context = User.get_preferences(True, {})

suppliers = []
for n in range(1, 4):
    p = Party(name=f'Supplier {n}', code=f'SUP{n}')
    p.save()
    suppliers.append(p)

Uom = Model.get('product.uom')
unit, = Uom.find([('name', '=', 'Unit')])
Template = Model.get('product.template')
products = []
for n, (name, price) in enumerate(
        [('Pump seal kit', '142.50'), ('Gear oil 5 L', '7.90'),
         ('Bearing 6204', '4.85'), ('Hydraulic hose 1 m', '12.40')], 1):
    t = Template(name=name, type='goods', default_uom=unit,
                 purchasable=True, purchase_uom=unit, list_price=Decimal(price))
    t.code = f'ITM{n}'
    t.save()
    products.append(t.products[0])

# Stock on hand: an inventory of the warehouse's storage counts 25 pump seal
# kits and 120 bearings.
Location = Model.get('stock.location')
storage, = Location.find([('code', '=', 'STO')])
Inventory = Model.get('stock.inventory')
inventory = Inventory(location=storage)
for product, quantity in [(products[0], 25), (products[2], 120)]:
    line = inventory.lines.new()
    line.product = product
    line.quantity = quantity
inventory.save()
inventory.click('confirm')

Purchase = Model.get('purchase.purchase')
for n in range(6):
    p = Purchase(party=suppliers[n % 3])
    p.purchase_date = datetime.date(2024, 1, 1 + n)
    p.reference = f'REF-{n + 1}'
    for k in range(2):
        line = p.lines.new()
        line.product = products[(n + k) % 4]
        line.quantity = float(2 + k + n % 3)
        line.unit_price = Decimal('10.10') + Decimal(n) + Decimal(k) / Decimal(4)
    p.save()
print('seeded', len(Purchase.find([])), 'purchases')
