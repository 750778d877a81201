"""Writes a MaxMind-format country database with the PyPI package mmdb-writer, which nobody here
wrote: each NETWORK=COUNTRY argument maps a network to an ISO 3166 alpha-2 code, as GeoIP2
Country records do ({"country": {"iso_code": ...}}).

Usage: write_db.py OUT NETWORK=COUNTRY...
Or:    write_db.py --geolite2   (prints the path of the GeoLite2 City database of the PyPI
                                 package maxminddb-geolite2)
"""

import os
import sys

if sys.argv[1] == "--geolite2":
    import _maxminddb_geolite2

    print(os.path.join(os.path.dirname(_maxminddb_geolite2.__file__), "GeoLite2-City.mmdb"))
    sys.exit(0)

from mmdb_writer import MMDBWriter
from netaddr import IPSet

out, mappings = sys.argv[1], sys.argv[2:]
writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
for mapping in mappings:
    network, country = mapping.split("=")
    writer.insert_network(IPSet([network]), {"country": {"iso_code": country}})
# Written aside and renamed: a reader never sees half a file.
writer.to_db_file(out + ".tmp")
os.replace(out + ".tmp", out)
